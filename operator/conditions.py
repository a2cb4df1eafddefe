"""Pure condition handling: merge new conditions into old ones, keeping lastTransitionTime
when the status did not change (so an unchanged reconcile writes nothing)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

READY = "Ready"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
CANARY_READY = "CanaryReady"
# Set while spec.canary.analysis is (canary_state.healthy_condition).
CANARY_HEALTHY = "CanaryHealthy"
ORDER = (READY, PROGRESSING, DEGRADED, CANARY_READY, CANARY_HEALTHY)


@dataclasses.dataclass(frozen=True)
class Condition:
    type: str
    status: bool | None  # None = Unknown
    reason: str
    message: str = ""

    @property
    def status_string(self) -> str:
        return {True: "True", False: "False", None: "Unknown"}[self.status]


def merge(
    old: Iterable[Mapping[str, Any]] | None,
    new: Iterable[Condition],
    *,
    generation: int,
    now: str,
) -> list[dict[str, Any]]:
    """Return the conditions to store. A condition keeps its lastTransitionTime unless its status
    changes; reason/message/observedGeneration follow the newest reading. Conditions not in `new`
    are dropped (e.g. CanaryReady after the canary is removed)."""
    previous = {c.get("type"): c for c in old or ()}
    out: list[dict[str, Any]] = []
    for cond in sorted(new, key=lambda c: ORDER.index(c.type) if c.type in ORDER else len(ORDER)):
        before = previous.get(cond.type)
        status = cond.status_string
        changed = before is None or before.get("status") != status
        out.append(
            {
                "type": cond.type,
                "status": status,
                "reason": cond.reason,
                "message": cond.message,
                "lastTransitionTime": now if changed else before.get("lastTransitionTime", now),
                "observedGeneration": generation,
            }
        )
    return out


def find(conditions: Iterable[Mapping[str, Any]] | None, type_: str) -> Mapping[str, Any] | None:
    for c in conditions or ():
        if c.get("type") == type_:
            return c
    return None


def transitions(old: Iterable[Mapping[str, Any]] | None, new: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Conditions whose status or reason changed: these deserve an Event."""
    previous = {c.get("type"): c for c in old or ()}
    changed = []
    for c in new:
        p = previous.get(c["type"])
        if p is None or p.get("status") != c["status"] or p.get("reason") != c["reason"]:
            changed.append(c)
    return changed
