"""The operator's picture of the cluster, fed by watch events instead of a GET per child per pass.

`ObjectCache` holds the children the operator labels (`app.kubernetes.io/managed-by=pixtral-operator`),
the nodes (for the GPU check) and the PixtralDeployments themselves. kopf's watch streams feed it
(`handlers/watch.py`); kopf's indexes hold every handler back until the first listing of every
watched kind is in, so a reconcile never reads a cache that is still filling.

`CachedKube` is the `Kube` the reconcile and the autoscaler use: reads of the watched kinds come from
the cache, everything else (Secrets, which the operator may never list or watch, and
PersistentVolumeClaims) is read from the API and an object found is taken as read for
UNWATCHED_READ_SECONDS. Writes go to the API and their answers into the cache
at once, so the next pass, which may run before the write's own watch event arrives, does not apply
the same object again; that watch event, carrying the version the write answered, then reconciles
nothing (the pass that wrote it saw it already).

The watches see every object of the child kinds, not only the operator's: the others are kept by
name only (`note_foreign`). So a child name missing from the cache is known to be free, and the
first pass of a new PixtralDeployment reads none of its dozen children from the API (before, 200
objects created at once read each child once, every read a 404: 400 Service GETs, for one); a namesake someone else created is read
with one GET (`get`), for the ChildConflict that names its holder. Until the watches run (unit
tests without them) every miss is a GET. Where only an object this PixtralDeployment controls
matters (a removed canary's children, the Deployment the autoscaler scales), a miss is the answer
(`get_owned`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pixtral_operator.capacity import GPU_PRODUCT_LABEL, GPU_RESOURCE
from pixtral_operator.jsontree import copy_tree, merge_patch
from pixtral_operator.k8s import Kube
from pixtral_operator.render import labels as L
from pixtral_operator.spec import KIND

# The label every child carries (render/labels.common_labels); the watches select on it.
MANAGED_LABEL = ("app.kubernetes.io/managed-by", L.MANAGED_BY)

# (apiVersion, kind, plural) of every child kind the operator watches; Secrets are deliberately absent
# (get and create only, never list or watch: docs/install.md#permissions).
WATCHED_CHILD_KINDS: tuple[tuple[str, str, str], ...] = (
    ("apps/v1", "Deployment", "deployments"),
    ("v1", "Service", "services"),
    ("v1", "ConfigMap", "configmaps"),
    ("v1", "ServiceAccount", "serviceaccounts"),
    ("rbac.authorization.k8s.io/v1", "Role", "roles"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding", "rolebindings"),
    ("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets"),
    ("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies"),
    ("monitoring.coreos.com/v1", "PodMonitor", "podmonitors"),
)
CACHED_KINDS = frozenset(kind for _, kind, _ in WATCHED_CHILD_KINDS)
# How long an object of a kind that is not watched (Secrets, PVCs) is taken as the API last showed
# it. Every pass checks the internal key's Secret (and the Secrets and claims the spec names), and a
# create's child events run several passes in a few seconds: 200 objects created at once cost
# 1,265 Secret GETs. A Secret deleted meanwhile is noticed this much later; one that does not
# exist is read again at every pass (a missing reference shows as soon as it is created).
UNWATCHED_READ_SECONDS = 60.0

Key = tuple[str, str | None, str]  # (kind, namespace, name)


def _key(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return (str(obj.get("kind")), meta.get("namespace"), str(meta.get("name")))


def _version(obj: Mapping[str, Any]) -> int | None:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion"))
    except (TypeError, ValueError):
        return None


def controller_owner(obj: Mapping[str, Any]) -> tuple[str, str] | None:
    """Pure: (namespace, name) of the PixtralDeployment that controls `obj`, if one does."""
    meta = obj.get("metadata") or {}
    for ref in meta.get("ownerReferences") or ():
        if ref.get("controller") and ref.get("kind") == KIND and meta.get("namespace"):
            return (meta["namespace"], ref.get("name"))
    return None


def gpu_view(node: Mapping[str, Any]) -> tuple[Any, Any]:
    """Pure: the part of a node the GPU check (capacity.py) reads."""
    labels = (node.get("metadata") or {}).get("labels") or {}
    allocatable = (node.get("status") or {}).get("allocatable") or {}
    return (labels.get(GPU_PRODUCT_LABEL), allocatable.get(GPU_RESOURCE))


class ObjectCache:
    """Thread-safe: kopf's event loop writes, the reconcile's worker threads read."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: dict[Key, dict[str, Any]] = {}
        self._nodes: dict[str, dict[str, Any]] = {}
        # The resourceVersion of each child as the operator's own last write answered it: the watch
        # event that echoes that write carries nothing the writing pass did not already see.
        self._written: dict[Key, str] = {}
        # Objects of the watched child kinds that no PixtralDeployment controls: names only.
        self._foreign: set[Key] = set()
        # Objects of kinds that are not watched, as an API read or write last answered: (object, when).
        self._reads: dict[Key, tuple[dict[str, Any], float]] = {}
        self.nodes_watched = False
        self.children_watched = False  # set once the child kinds' watches feed put/note_foreign

    def put(self, obj: Mapping[str, Any]) -> None:
        """Store `obj` unless the cache already holds a newer version of it: a write's answer is
        stored before that write's own (or an older) watch event arrives."""
        key = _key(obj)
        new = copy_tree(dict(obj))
        with self._lock:
            old = self._objects.get(key)
            if old is not None:
                have, got = _version(old), _version(new)
                if have is not None and got is not None and got < have:
                    return
            self._objects[key] = new
            self._foreign.discard(key)

    def discard(self, kind: str, namespace: str | None, name: str) -> None:
        with self._lock:
            self._objects.pop((kind, namespace, name), None)
            self._written.pop((kind, namespace, name), None)
            self._foreign.discard((kind, namespace, name))
            self._reads.pop((kind, namespace, name), None)
            if kind == KIND:
                # Its internal key goes with it: a namesake created next must not find the old one here.
                for key in [k for k, (obj, _) in self._reads.items() if controller_owner(obj) == (namespace, name)]:
                    del self._reads[key]

    def remember_read(self, obj: Mapping[str, Any], when: float) -> None:
        with self._lock:
            self._reads[_key(obj)] = (copy_tree(dict(obj)), when)

    def recent_read(self, kind: str, namespace: str | None, name: str, now: float, seconds: float) -> dict[str, Any] | None:
        """What the API showed of an unwatched object less than `seconds` ago, if it existed then."""
        with self._lock:
            entry = self._reads.get((kind, namespace, name))
            if entry is None or now - entry[1] >= seconds:
                return None
            return copy_tree(entry[0])

    def note_foreign(self, kind: str, namespace: str | None, name: str) -> None:
        """An object of a watched kind exists under this name and no PixtralDeployment controls it."""
        key = (kind, namespace, name)
        with self._lock:
            self._objects.pop(key, None)
            self._written.pop(key, None)
            self._foreign.add(key)

    def known_absent(self, kind: str, namespace: str | None, name: str) -> bool:
        """Whether the watches show that no object of this kind and name exists."""
        key = (kind, namespace, name)
        with self._lock:
            return self.children_watched and key not in self._objects and key not in self._foreign

    def note_own_write(self, obj: Mapping[str, Any]) -> None:
        """Remember the version a write of the operator's own produced (see `is_own_write`)."""
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if version:
            with self._lock:
                self._written[_key(obj)] = str(version)

    def is_own_write(self, kind: str, namespace: str | None, name: str, version: Any) -> bool:
        """Whether a watch event of this version is the echo of the operator's own last write of the
        object (once: a second event of the same version is not expected)."""
        if not version:
            return False
        with self._lock:
            if self._written.get((kind, namespace, name)) != str(version):
                return False
            del self._written[(kind, namespace, name)]
            return True

    def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        with self._lock:
            obj = self._objects.get((kind, namespace, name))
            return copy_tree(obj) if obj is not None else None

    def merge_status(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        """Fold a status merge patch the operator sent into the cached PixtralDeployment."""
        with self._lock:
            obj = self._objects.get((KIND, namespace, name))
            if obj is None:
                return
            obj["status"] = merge_patch(obj.get("status") or {}, patch)

    def count(self, kind: str) -> int:
        with self._lock:
            return sum(1 for k in self._objects if k[0] == kind)

    # --- nodes (cluster-scoped, read whole for the GPU check)
    def put_node(self, node: Mapping[str, Any]) -> None:
        with self._lock:
            self._nodes[str((node.get("metadata") or {}).get("name"))] = copy_tree(dict(node))

    def discard_node(self, name: str) -> None:
        with self._lock:
            self._nodes.pop(name, None)

    def owners(self) -> list[tuple[str, str]]:
        """Every cached PixtralDeployment's (namespace, name)."""
        with self._lock:
            return [(k[1] or "", k[2]) for k in self._objects if k[0] == KIND]

    def nodes(self) -> list[dict[str, Any]] | None:
        """None while nodes are not watched (the GPU check is skipped then, as on a 403)."""
        if not self.nodes_watched:
            return None
        with self._lock:
            return [copy_tree(n) for n in self._nodes.values()]


class CachedKube:
    """A `Kube` whose reads of the watched kinds come from `cache`; see the module's docstring."""

    def __init__(self, api: Kube, cache: ObjectCache, cached_kinds: Iterable[str] = CACHED_KINDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.api = api
        self.cache = cache
        self.cached_kinds = frozenset(cached_kinds)
        self._clock = clock

    def _read_unwatched(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        now = self._clock()
        recent = self.cache.recent_read(kind, namespace, name, now, UNWATCHED_READ_SECONDS)
        if recent is not None:
            return recent
        obj = self.api.get(api_version, kind, namespace, name)
        if obj is not None:
            self.cache.remember_read({**obj, "kind": kind}, now)
        return obj

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        if kind not in self.cached_kinds:
            return self._read_unwatched(api_version, kind, namespace, name)
        hit = self.cache.get(kind, namespace, name)
        if hit is not None or self.cache.known_absent(kind, namespace, name):
            return hit
        # Someone else's namesake (read whole for the conflict's message), or no watch yet.
        return self.api.get(api_version, kind, namespace, name)

    def get_owned(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """An object that matters only if the operator made it: a cache miss means there is none."""
        if kind not in self.cached_kinds:
            return self._read_unwatched(api_version, kind, namespace, name)
        return self.cache.get(kind, namespace, name)

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        applied = self.api.apply(obj)
        self._remember(applied)
        return applied

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any] | None:
        created = self.api.create(obj)
        if created is not None:
            self._remember({**created, "kind": obj["kind"]})
        return created

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        deleted = self.api.delete(api_version, kind, namespace, name)
        self.cache.discard(kind, namespace, name)
        return deleted

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        self.api.patch_status(namespace, name, status)
        self.cache.merge_status(namespace, name, status)

    def scale_deployment(self, namespace: str, name: str, replicas: int) -> None:
        self.api.scale_deployment(namespace, name, replicas)

    def claim_replicas(self, namespace: str, name: str, replicas: int) -> bool:
        return self.api.claim_replicas(namespace, name, replicas)

    def list_nodes(self) -> list[dict[str, Any]] | None:
        return self.cache.nodes()

    def _remember(self, obj: Mapping[str, Any]) -> None:
        if obj.get("kind") in self.cached_kinds:
            self.cache.put(obj)
            self.cache.note_own_write(obj)
        else:
            self.cache.remember_read(obj, self._clock())
