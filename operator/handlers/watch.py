"""kopf registration of the watches that feed the operator's cache (`cache.py`) and trigger a
reconcile of the owning PixtralDeployment when one of its children changes (`requeue.py`).

kopf filters on the client: it lists and watches every object of a kind and hands each event to
the handlers. Children are selected by their controller reference to a PixtralDeployment, which a
hand edit of a label cannot remove. The index handlers store each object before any other handler
runs (kopf holds every handler until all indexes have their first listing), so a reconcile never
sees a cache that is still filling; deletions arrive through the event handlers."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
from pixtral_operator import metrics
from pixtral_operator.cache import WATCHED_CHILD_KINDS, ObjectCache, controller_owner, gpu_view
from pixtral_operator.requeue import Requeue
from pixtral_operator.spec import GROUP, PLURAL, VERSION

_UNSEEN = object()


def _split(api_version: str) -> tuple[str, str]:
    group, _, version = api_version.rpartition("/")
    return group, version


def register_watches(registry: kopf.OperatorRegistry, cache: ObjectCache, requeue: Requeue) -> frozenset[str]:
    """Returns the ids of the event handlers, which run for every watch event (logfilter.py)."""
    ids = {_register_child(registry, cache, requeue, *_split(api_version), plural, kind)
           for api_version, kind, plural in WATCHED_CHILD_KINDS}

    cache.nodes_watched = True
    cache.children_watched = True

    @kopf.index(group="", version="v1", plural="nodes", id="node-cache", registry=registry)
    async def index_node(body: kopf.Body, **_: Any) -> None:
        cache.put_node(dict(body))

    # A node that joins, goes or changes its GPUs can change every PixtralDeployment's GPU verdict.
    # The index above has stored it already; compare with what the last event showed.
    gpu_seen: dict[str, Any] = {}

    def on_event(handler_id: str, **where: Any) -> Any:
        ids.add(handler_id)
        return kopf.on.event(**where, id=handler_id, registry=registry)

    @on_event("node-changed", group="", version="v1", plural="nodes")
    async def node_event(event: kopf.RawEvent, **_: Any) -> None:
        name = event["object"]["metadata"]["name"]
        if event["type"] == "DELETED":
            cache.discard_node(name)
            view = None
        else:
            view = gpu_view(event["object"])
        before = gpu_seen.get(name, _UNSEEN)
        if view is None:
            gpu_seen.pop(name, None)
        else:
            gpu_seen[name] = view
        if event["type"] is not None and before != view:
            await asyncio.gather(*(requeue.kick(owner) for owner in cache.owners()))

    # The PixtralDeployments themselves: the body a child's event reconciles with, its status kept
    # current by the operator's own status patches (CachedKube.patch_status) between watch events.
    @kopf.index(group=GROUP, version=VERSION, plural=PLURAL, id="pixtraldeployment-cache", registry=registry)
    async def index_owner(body: kopf.Body, **_: Any) -> None:
        cache.put(dict(body))

    @on_event("pixtraldeployment-gone", group=GROUP, version=VERSION, plural=PLURAL)
    async def owner_event(event: kopf.RawEvent, **_: Any) -> None:
        if event["type"] == "DELETED":
            meta = event["object"]["metadata"]
            cache.discard(event["object"].get("kind", ""), meta.get("namespace"), meta["name"])
            requeue.forget((meta.get("namespace"), meta["name"]))

    return frozenset(ids)


def _register_child(
    registry: kopf.OperatorRegistry, cache: ObjectCache, requeue: Requeue,
    group: str, version: str, plural: str, kind: str,
) -> str:
    """Returns the id of the child kind's event handler."""
    changed_id = f"{plural}-changed"

    @kopf.index(group=group, version=version, plural=plural, id=f"{plural}-cache", registry=registry)
    async def index_child(body: kopf.Body, **_: Any) -> None:
        obj = dict(body)
        obj.setdefault("kind", kind)
        meta = obj.get("metadata") or {}
        if controller_owner(obj) is not None:
            cache.put(obj)
        else:
            cache.note_foreign(kind, meta.get("namespace"), meta.get("name"))

    @kopf.on.event(group=group, version=version, plural=plural, id=changed_id, registry=registry)
    async def child_event(event: kopf.RawEvent, **_: Any) -> None:
        obj = event["object"]
        meta = obj.get("metadata") or {}
        owner = controller_owner(obj)
        if event["type"] == "DELETED":
            cache.discard(kind, meta.get("namespace"), meta.get("name"))
        if owner is not None and event["type"] is not None:
            # The initial listing (type None) changed nothing: the resume handlers reconcile anyway.
            if event["type"] != "DELETED" and cache.is_own_write(
                    kind, meta.get("namespace"), meta.get("name"), meta.get("resourceVersion")):
                # The echo of the operator's own apply: a create's dozen children would otherwise
                # cost their owner passes that find nothing to do.
                metrics.CHILD_EVENTS.labels(kind, "own-write").inc()
                return
            metrics.CHILD_EVENTS.labels(kind, "reconcile").inc()
            await requeue.kick(owner)

    return changed_id
