"""The one Event shape the operator posts (reconcile and autoscaler alike); the kopf handlers send it."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Event:
    type: str  # "Normal" or "Warning", as Kubernetes Events have it
    reason: str
    message: str
