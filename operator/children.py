"""Bring the children of one PixtralDeployment to their rendered form, and nothing else.

- Drift: a child is applied when its rendered hash changed or when the live object no longer holds
  every rendered field (`drift.covers`), so a hand edit of a field the operator sets is reverted by
  the next reconcile or resync; an unchanged child is not written.
- Ownership: a live object with a child's name that this PixtralDeployment does not control is never
  written or deleted; the reconcile reports ChildConflict instead.
- Replicas: while the autoscaler owns a track, its Deployment is applied without `spec.replicas`.
  Server-side apply would reset a field its only owner stops applying, so before the operator's
  field manager lets go, the autoscaler's manager is made a co-owner at the live value.
- Failures: an apply the API server refuses stops the pass; the reconcile turns it into a Degraded
  condition naming the child and the server's message, and an Event."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from pixtral_operator.drift import controlled_by, covers, replicas_managers
from pixtral_operator.events import Event
from pixtral_operator.jsontree import copy_tree
from pixtral_operator.k8s import ApplyError, Kube
from pixtral_operator.render import labels as L
from pixtral_operator.render.internalkey import internal_key_secret, new_token

CHILD_CONFLICT = "ChildConflict"
APPLY_FAILED = "ApplyFailed"


@dataclasses.dataclass(frozen=True)
class ChildProblem:
    field: str  # "<Kind>/<name>": the child, where a spec problem names a spec field
    reason: str
    message: str


@dataclasses.dataclass
class SyncResult:
    live: dict[tuple[str, str], dict[str, Any] | None]  # (kind, name) -> the object after this pass
    events: list[Event]
    problems: list[ChildProblem]
    writes: int = 0
    # "Created"/"Updated" -> "<Kind> <name>" of each child written, in order; sync turns them into
    # one Event per verb (applied_events).
    applied: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    def note_applied(self, verb: str, kind: str, name: str) -> None:
        self.applied.setdefault(verb, []).append(f"{kind} {name}")

    @property
    def failed(self) -> bool:
        return any(p.reason == APPLY_FAILED for p in self.problems)


def conflicts(
    children: list[Mapping[str, Any]], live: Mapping[tuple[str, str], Mapping[str, Any] | None], owner_uid: str
) -> list[ChildProblem]:
    """Pure: children whose name is taken by an object this PixtralDeployment does not control."""
    out = []
    for child in children:
        kind, name = child["kind"], child["metadata"]["name"]
        obj = live.get((kind, name))
        if obj is not None and not controlled_by(obj, owner_uid):
            refs = (obj.get("metadata") or {}).get("ownerReferences") or ()
            holder = next((f"{r.get('kind')} {r.get('name')}" for r in refs if r.get("controller")), None)
            out.append(
                ChildProblem(
                    f"{kind}/{name}",
                    CHILD_CONFLICT,
                    f"{kind} {child['metadata'].get('namespace')}/{name} exists and is "
                    f"{'controlled by ' + holder if holder else 'not owned by this PixtralDeployment'}; "
                    "it is left untouched (rename or delete it)",
                )
            )
    return out


def needs_apply(desired: Mapping[str, Any], live: Mapping[str, Any] | None) -> bool:
    """Pure: whether the live object lacks the rendered one (new hash, or an owned field changed)."""
    if live is None:
        return True
    want = desired["metadata"]["annotations"][L.SPEC_HASH_ANNOTATION]
    have = ((live.get("metadata") or {}).get("annotations") or {}).get(L.SPEC_HASH_ANNOTATION)
    return want != have or not covers(desired, live)


def without_replicas(deployment: Mapping[str, Any]) -> dict[str, Any]:
    out = copy_tree(dict(deployment))
    out["spec"].pop("replicas", None)
    return out


def sync(
    children: list[Mapping[str, Any]],
    kube: Kube,
    owner_uid: str,
    autoscaled: Collection[str],
    live: Mapping[tuple[str, str], dict[str, Any] | None],
    first: Callable[[], SyncResult] | None = None,
) -> SyncResult:
    """Apply what differs, in order. `autoscaled`: names of the Deployments whose replicas the
    autoscaler owns; `live`: every child's live object, read by the caller; `first`: a step run
    once no child conflicts, before any apply (the internal key's Secret), stopping on a problem."""
    result = SyncResult(live=dict(live), events=[], problems=conflicts(children, live, owner_uid))
    if result.problems:
        return result
    if first is not None:
        before = first()
        result.live.update(before.live)
        result.events += before.events
        result.problems += before.problems
        result.writes += before.writes
        for verb, names in before.applied.items():
            result.applied.setdefault(verb, []).extend(names)
        if result.problems:
            result.events[:0] = applied_events(result.applied)
            return result
    for child in children:
        kind, meta = child["kind"], child["metadata"]
        key = (kind, meta["name"])
        current = live.get(key)
        desired: Mapping[str, Any] = child
        try:
            if kind == "Deployment" and meta["name"] in autoscaled and current is not None:
                desired = without_replicas(child)
                if replicas_managers(current) <= {L.FIELD_MANAGER}:
                    # Hand the field over at its live value before the apply below stops claiming it.
                    replicas = int((current.get("spec") or {}).get("replicas", 0))
                    if kube.claim_replicas(meta["namespace"], meta["name"], replicas):
                        result.writes += 1
            if not needs_apply(desired, current):
                continue
            applied = kube.apply(desired)
            result.writes += 1
            if kind == "Deployment" and meta["name"] in autoscaled and current is None:
                # Created with the initial count; the autoscaler co-owns it from now on.
                kube.claim_replicas(meta["namespace"], meta["name"], int(child["spec"]["replicas"]))
                result.writes += 1
        except ApplyError as error:
            message = f"{kind} {meta['namespace']}/{meta['name']}: the API server refused the apply: {error.message}"
            result.problems.append(ChildProblem(f"{kind}/{meta['name']}", APPLY_FAILED, message))
            result.events[:0] = applied_events(result.applied)
            result.events.append(Event("Warning", APPLY_FAILED, message))
            return result
        result.live[key] = applied
        result.note_applied("Created" if current is None else "Updated", kind, meta["name"])
    result.events[:0] = applied_events(result.applied)
    return result


def applied_events(applied: Mapping[str, Sequence[str]]) -> list[Event]:
    """One Event per verb for a pass's writes ("Created Deployment demo-stable, Service demo, ..."),
    not one per child: a create writes a dozen children, and `kubectl describe` showed them as a
    dozen lines that each said the same thing (with 200 objects created at once, every client's
    Event POSTs went from 1,448 to 1,252; docs/benchmarks.md, run 11)."""
    return [Event("Normal", verb, f"{verb} {', '.join(names)}") for verb, names in applied.items() if names]


def ensure_internal_key(
    name: str, namespace: str, kube: Kube, owner: Mapping[str, Any], token: Callable[[], str] = new_token
) -> SyncResult:
    """Create the internal-key Secret when it is absent; an existing one is never written (its token
    is generated once), and one this PixtralDeployment does not control is a ChildConflict."""
    secret_name = L.internal_key_name(name)
    key = ("Secret", secret_name)
    live = kube.get("v1", "Secret", namespace, secret_name)
    result = SyncResult(live={key: live}, events=[], problems=[])
    if live is not None:
        result.problems = conflicts([{"kind": "Secret", "metadata": {"name": secret_name, "namespace": namespace}}],
                                    result.live, owner["metadata"]["uid"])
        return result
    desired = internal_key_secret(name, namespace, owner, token())
    try:
        created = kube.create(desired)
    except ApplyError as error:
        message = f"Secret {namespace}/{secret_name}: the API server refused the create: {error.message}"
        result.problems.append(ChildProblem(f"Secret/{secret_name}", APPLY_FAILED, message))
        result.events.append(Event("Warning", APPLY_FAILED, message))
        return result
    if created is not None:  # None: created meanwhile (another replica's reconcile); its token stands
        result.writes += 1
        result.note_applied("Created", "Secret", secret_name)
    result.live[key] = created
    return result


def retry_delay(retry: int, base: float = 5.0, cap: float = 300.0) -> float:
    """Seconds before retrying a failed reconcile: doubling from `base`, at most `cap`."""
    return min(cap, base * 2 ** max(0, retry))


# The API server's admission (OwnerReferencesPermissionEnforcement) maps an owner reference's kind
# through discovery it re-reads every few seconds (up to 30). Until a newly installed CRD's kind is
# in it, every child with blockOwnerDeletion is refused with this text; nothing is wrong with the
# object, and the refusal passes by itself.
KIND_NOT_YET_KNOWN = "cannot find RESTMapping"
KIND_NOT_YET_KNOWN_RETRY_SECONDS = 2.0


def kind_not_yet_known(problems: Sequence[ChildProblem]) -> bool:
    return any(KIND_NOT_YET_KNOWN in p.message for p in problems)


def retry_after(retry: int, problems: Sequence[ChildProblem]) -> float:
    """The delay before the next pass of a refused reconcile. A kind the API server does not map yet
    is retried every 2 s rather than backed off: measured with 200 objects created right after the
    chart installed the CRD, the refusals lasted about 20 s and the 5-10-20-40 s backoff held the
    last objects until 83-89 s (docs/benchmarks.md, "Control plane at scale")."""
    if kind_not_yet_known(problems):
        return min(retry_delay(retry), KIND_NOT_YET_KNOWN_RETRY_SECONDS)
    return retry_delay(retry)
