"""Pure drain decisions: read vLLM's queue gauges from its Prometheus text and decide when to stop.

vLLM only counts a request in `vllm:num_requests_running/waiting` once its scheduler holds it;
a request that is still being preprocessed, or whose last tokens are still being streamed back,
is briefly invisible there. So the engine is called idle only after the gauges read zero on
`IDLE_POLLS_REQUIRED` consecutive polls, which covers those gaps (and the few seconds in which
Kubernetes may still route a new request to a pod it is removing from its endpoints).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

QUEUE_GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting")
IDLE_POLLS_REQUIRED = 3


def requests_in_flight(metrics_text: str) -> int | None:
    """running + waiting summed over every label set (engines, models), or None when vLLM's
    text does not contain the gauges (not started, or an unexpected exposition)."""
    totals: dict[str, float] = {}
    for line in metrics_text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_and_labels, _, rest = line.partition(" ")
        if "}" in line:
            name_and_labels, _, rest = line.rpartition("}")
            name_and_labels, rest = name_and_labels + "}", rest.strip()
        name = name_and_labels.split("{", 1)[0]
        if name not in QUEUE_GAUGES:
            continue
        try:
            value = float(rest.split()[0])
        except (IndexError, ValueError):
            return None
        if math.isnan(value):
            return None
        totals[name] = totals.get(name, 0.0) + value
    if set(totals) != set(QUEUE_GAUGES):
        return None
    return int(round(sum(totals.values())))


class DrainAction(Enum):
    WAIT = "wait"
    STOP_IDLE = "stop: no running or waiting requests"
    STOP_TIMEOUT = "stop: drain timeout passed"
    STOP_NOT_SERVING = "stop: vLLM never became ready, nothing can be in flight"


@dataclass(frozen=True)
class DrainState:
    consecutive_idle_polls: int = 0


def next_drain_step(state: DrainState, in_flight: int | None, elapsed_seconds: float, timeout_seconds: float,
                    vllm_was_ready: bool) -> tuple[DrainAction, DrainState]:
    """One poll of the drain loop. `in_flight` None means the metrics could not be read: that
    proves nothing about in-flight work, so only the timeout ends the wait then."""
    if not vllm_was_ready:
        return DrainAction.STOP_NOT_SERVING, state
    idle_polls = state.consecutive_idle_polls + 1 if in_flight == 0 else 0
    new_state = DrainState(consecutive_idle_polls=idle_polls)
    if idle_polls >= IDLE_POLLS_REQUIRED:
        return DrainAction.STOP_IDLE, new_state
    if elapsed_seconds >= timeout_seconds:
        return DrainAction.STOP_TIMEOUT, new_state
    return DrainAction.WAIT, new_state
