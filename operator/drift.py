"""Pure comparisons of a rendered child with its live object: drift, ownership, replica owners.

`covers(desired, live)` is the live projection of the fields the operator sets: every field of the
rendered object must be present in the live one with the same value. Fields the API server adds
(defaults, uid, status, managedFields) and fields other managers set are not the operator's, so they
do not count as drift; a hand edit of a field the operator renders does, and the next reconcile
applies the rendered object again (server-side apply takes the field back)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def covers(desired: Any, live: Any) -> bool:
    """True when `live` holds every field of `desired` with the same value. Lists must have the same
    length and each element must cover (the operator renders whole lists: env, ports, volumes). A
    field the API server leaves out because it holds its zero value (Go's `omitempty` on a plain
    bool, number or string, e.g. a Service's `publishNotReadyAddresses: false`) is no drift."""
    if isinstance(desired, Mapping):
        if not isinstance(live, Mapping):
            return False
        return all(
            covers(value, live[key]) if key in live else _is_zero(value) for key, value in desired.items()
        )
    if isinstance(desired, list | tuple):
        if not isinstance(live, list | tuple) or len(desired) != len(live):
            return False
        return all(covers(d, v) for d, v in zip(desired, live, strict=True))
    if isinstance(desired, bool) or isinstance(live, bool):
        return desired is live
    return desired == live


def _is_zero(value: Any) -> bool:
    return value is None or value is False or (not isinstance(value, bool) and value in (0, "")) or (
        isinstance(value, list | tuple | Mapping) and len(value) == 0
    )


def controlled_by(live: Mapping[str, Any], owner_uid: str) -> bool:
    """Whether `live` names the PixtralDeployment with this uid as its controller."""
    refs = (live.get("metadata") or {}).get("ownerReferences") or ()
    return any(ref.get("uid") == owner_uid and ref.get("controller") for ref in refs)


def replicas_managers(live: Mapping[str, Any]) -> set[str]:
    """The field managers that own `spec.replicas` of a live Deployment (from managedFields)."""
    managers = set()
    for entry in (live.get("metadata") or {}).get("managedFields") or ():
        fields = entry.get("fieldsV1") or {}
        if "f:replicas" in (fields.get("f:spec") or {}):
            managers.add(entry.get("manager", ""))
    return managers
