"""The autoscaler's decision: how many replicas a track should run, from its load.

Everything here is pure: the operator's timer reads the load (``prometheus.py``), builds a
:class:`Signal`, calls :func:`decide` with the :class:`TrackState` it stored on the previous tick,
patches the track's Deployment when ``Decision.changed`` and stores ``Decision.state`` again.

The rules (docs/autoscaling.md explains them for operators):

* recommendation = ceil(load / targetQueuePerReplica), bounded by [minReplicas, maxReplicas];
* scale up at once (at most ``maxScaleUpStep`` per tick) to the lowest recommendation seen within
  ``scaleUpWindowSeconds`` (0: the current one);
* scale down only after every recommendation for ``scaleDownWindowSeconds`` of continuous,
  complete readings was below the current replicas, and then to the highest of them, so an input
  that flaps between high and low never moves the output down; a recommendation holds from its
  reading until the next one, so the window counts what was in force over it, not only the
  readings that fell inside it;
* a signal that is missing, stale or partial never scales down; a partial signal is a lower bound
  of the real load, so it may still scale up (this is what wakes a track at zero replicas from the
  router's pending gauge while the engine has no pods to report);
* never scale to zero unless the router's pending gauge is being read, or nothing could wake the
  track again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from pixtral_operator.events import Event
from pixtral_operator.spec import Autoscaling, PixtralSpec

# Decision reasons (CamelCase, shown in status.autoscaler.<track>.reason and in Events).
SCALE_UP = "ScaleUp"
SCALE_FROM_ZERO = "ScaleFromZero"
SCALE_DOWN_AFTER_WINDOW = "ScaleDownAfterWindow"
ABOVE_MAX = "AboveMax"
BELOW_MIN = "BelowMin"
HOLD_STALE_METRICS = "HoldStaleMetrics"
HOLD_WITHIN_WINDOW = "HoldWithinWindow"
HOLD_NO_WAKE_SIGNAL = "HoldNoWakeSignal"
AT_MIN = "AtMin"
AT_MAX = "AtMax"
STEADY = "Steady"

SCALING_REASONS = frozenset({SCALE_UP, SCALE_FROM_ZERO, SCALE_DOWN_AFTER_WINDOW, ABOVE_MAX, BELOW_MIN})

# An operator setting, not a spec field: readings further apart than this do not count as one
# continuous observation (the operator was down, or metrics were missing in between).
DEFAULT_MAX_READING_GAP_SECONDS = 120.0
# spec.autoscaling's defaults live once, in spec.py (the CRD states them for the API server).
_SPEC_DEFAULTS = Autoscaling()


class StateError(ValueError):
    """A stored autoscaler state could not be read back; the message names the field."""


@dataclass(frozen=True)
class Policy:
    """The scaling bounds and windows of one track. The CRD guarantees the ranges (minimums, min <=
    max), so nothing is checked again here."""

    min_replicas: int = _SPEC_DEFAULTS.min_replicas
    max_replicas: int = _SPEC_DEFAULTS.max_replicas
    target_queue_per_replica: int = _SPEC_DEFAULTS.target_queue_per_replica
    scale_up_window_seconds: float = _SPEC_DEFAULTS.scale_up_window_seconds
    scale_down_window_seconds: float = _SPEC_DEFAULTS.scale_down_window_seconds
    max_scale_up_step: int = _SPEC_DEFAULTS.max_scale_up_step
    max_reading_gap_seconds: float = DEFAULT_MAX_READING_GAP_SECONDS

    @classmethod
    def for_track(cls, spec: PixtralSpec, track: str, **overrides: Any) -> Policy:
        """The policy of one track: stable's spec.autoscaling, with the canary's own bounds for the
        canary (`PixtralSpec.autoscaling_bounds`). `overrides` set single fields (operator settings)."""
        a = spec.autoscaling
        low, high = spec.autoscaling_bounds(track)
        values: dict[str, Any] = {
            "min_replicas": low,
            "max_replicas": high,
            "target_queue_per_replica": a.target_queue_per_replica,
            "scale_up_window_seconds": a.scale_up_window_seconds,
            "scale_down_window_seconds": a.scale_down_window_seconds,
            "max_scale_up_step": a.max_scale_up_step,
        }
        values.update(overrides)
        return cls(**values)

    def recommend(self, load: float) -> int:
        """Replicas for a load, bounded by [min, max]; any load > 0 asks for at least one replica."""
        unbounded = self.unbounded_recommendation(load)
        return min(self.max_replicas, max(self.min_replicas, unbounded))

    def unbounded_recommendation(self, load: float) -> int:
        # ceil() already gives 1 for any 0 < load <= target: a single pending request wakes a
        # track at zero.
        return max(0, math.ceil(load / self.target_queue_per_replica))


@dataclass(frozen=True)
class Signal:
    """What the metrics say about one track's load at this tick.

    ``load`` is waiting + running requests on the track's engines plus the router's pending
    requests; ``None`` when nothing usable was read. ``complete`` is False when some part was
    missing, stale or covered only some pods: the load is then a lower bound of the real one.
    ``wake_visible`` says whether the router's pending gauge was read, i.e. whether a request
    arriving at zero replicas would be seen. ``problem`` explains what was wrong, for the status.
    """

    load: float | None
    complete: bool = True
    wake_visible: bool = True
    problem: str = ""

    @classmethod
    def missing(cls, problem: str) -> Signal:
        return cls(load=None, complete=False, wake_visible=False, problem=problem)


@dataclass(frozen=True)
class TrackState:
    """What the autoscaler remembers between ticks for one track (stored as a dict by the operator).

    ``replicas`` is the track's current replica count; the timer sets it from the Deployment
    before each decision. ``highs`` and ``lows`` hold the recent recommendations needed for the
    windows as monotonic queues of (time, recommendation): ``highs`` keeps only entries that no
    later entry matches or exceeds (so its first entry inside a window is the window's maximum),
    ``lows`` the mirror image. Their last entry is always the latest reading's recommendation, which
    the next reading stamps again at its own time (it held until then). Their length is bounded by
    maxReplicas + 1 whatever the tick rate, which keeps the stored state small.
    """

    replicas: int
    observing_since: float | None = None
    last_reading_time: float | None = None
    highs: tuple[tuple[float, int], ...] = ()
    lows: tuple[tuple[float, int], ...] = ()
    last_scale_time: float | None = None
    last_scale_direction: str | None = None
    last_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "replicas": self.replicas,
            "observingSince": self.observing_since,
            "lastReadingTime": self.last_reading_time,
            "highs": [[t, r] for t, r in self.highs],
            "lows": [[t, r] for t, r in self.lows],
            "lastScaleTime": self.last_scale_time,
            "lastScaleDirection": self.last_scale_direction,
            "lastReason": self.last_reason,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrackState:
        """Read a state written by :meth:`to_dict`; raises :class:`StateError` naming the bad field."""
        if not isinstance(data, dict):
            raise StateError(f"autoscaler state must be an object, got {type(data).__name__}")
        replicas = data.get("replicas")
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
            raise StateError(f"autoscaler state field replicas must be an integer >= 0, got {replicas!r}")
        direction = data.get("lastScaleDirection")
        if direction not in (None, "up", "down"):
            raise StateError(
                f"autoscaler state field lastScaleDirection must be up or down, got {direction!r}"
            )
        reason = data.get("lastReason")
        if reason is not None and not isinstance(reason, str):
            raise StateError(f"autoscaler state field lastReason must be a string, got {reason!r}")
        return cls(
            replicas=replicas,
            observing_since=_optional_time(data, "observingSince"),
            last_reading_time=_optional_time(data, "lastReadingTime"),
            highs=_queue(data, "highs"),
            lows=_queue(data, "lows"),
            last_scale_time=_optional_time(data, "lastScaleTime"),
            last_scale_direction=direction,
            last_reason=reason,
        )


@dataclass(frozen=True)
class Decision:
    desired: int
    reason: str
    message: str
    state: TrackState
    load: float | None
    recommendation: int | None
    previous: int
    event: Event | None = None

    @property
    def changed(self) -> bool:
        return self.desired != self.previous

    def status(self) -> dict[str, Any]:
        """The track's entry under status.autoscaler.<track>."""
        return {
            "load": self.load,
            "recommendation": self.recommendation,
            "desired": self.desired,
            "lastScaleTime": format_time(self.state.last_scale_time),
            "reason": self.reason,
            "message": self.message,
        }


def decide(state: TrackState, signal: Signal, policy: Policy, now: float) -> Decision:
    """The replicas one track should run now, why, and the state to keep for the next tick."""
    current = state.replicas
    load = signal.load
    if load is not None and (not math.isfinite(load) or load < 0):
        signal = Signal.missing(f"load reading {load!r} is not a finite number >= 0")
        load = None

    recommendation = None if load is None else policy.recommend(load)
    highs, lows = state.highs, state.lows
    observing_since, last_reading_time = state.observing_since, state.last_reading_time
    if recommendation is not None:
        # The previous reading's recommendation held until this reading: stamp it at `now` first, so
        # that ticks that did not run (a stalled operator, a starved node) cannot let a high
        # recommendation leave the window unseen and scale down on the first reading after them.
        if highs:
            highs = _push_high(highs, now, highs[-1][1], policy.scale_down_window_seconds)
        if lows:
            lows = _push_low(lows, now, lows[-1][1], policy.scale_up_window_seconds)
        highs = _push_high(highs, now, recommendation, policy.scale_down_window_seconds)
        lows = _push_low(lows, now, recommendation, policy.scale_up_window_seconds)
    if signal.complete and load is not None:
        gap_too_long = last_reading_time is None or now - last_reading_time > policy.max_reading_gap_seconds
        if observing_since is None or gap_too_long:
            observing_since = now
        last_reading_time = now
    else:
        # Scale-down needs a whole window of complete readings; a hole in them starts it again.
        observing_since = None
    next_state = replace(
        state, highs=highs, lows=lows, observing_since=observing_since, last_reading_time=last_reading_time
    )

    desired, reason, message = _choose(current, signal, recommendation, next_state, policy, now)

    if desired != current:
        next_state = replace(
            next_state,
            replicas=desired,
            last_scale_time=now,
            last_scale_direction="up" if desired > current else "down",
        )
    next_state = replace(next_state, last_reason=reason)
    return Decision(
        desired=desired,
        reason=reason,
        message=message,
        state=next_state,
        load=load,
        recommendation=recommendation,
        previous=current,
        event=_event(current, desired, reason, message, state.last_reason),
    )


def _choose(
    current: int,
    signal: Signal,
    recommendation: int | None,
    state: TrackState,
    policy: Policy,
    now: float,
) -> tuple[int, str, str]:
    # Bounds first: they need no metrics, and a changed spec must take effect even while the
    # metrics are down.
    if current > policy.max_replicas:
        return policy.max_replicas, ABOVE_MAX, f"{current} replicas exceed maxReplicas {policy.max_replicas}"
    if current < policy.min_replicas:
        return (
            policy.min_replicas,
            BELOW_MIN,
            f"{current} replicas are below minReplicas {policy.min_replicas}",
        )

    if recommendation is None:
        return (
            current,
            HOLD_STALE_METRICS,
            f"holding {current} replicas: {signal.problem or 'no load reading'}",
        )

    load_text = _format_load(signal.load)
    if recommendation > current:
        if current == 0:
            # A request is waiting at the router: wake now, whatever the scale-up window says.
            target = max(1, min(_up_target(state, recommendation, policy), policy.max_scale_up_step))
            return target, SCALE_FROM_ZERO, f"load {load_text} with no replicas; starting {target}"
        up_target = _up_target(state, recommendation, policy)
        if up_target <= current:
            return (
                current,
                HOLD_WITHIN_WINDOW,
                f"recommendation {recommendation} > {current} replicas, but the lowest within "
                f"scaleUpWindowSeconds {_format_seconds(policy.scale_up_window_seconds)} is {up_target}",
            )
        target = min(up_target, current + policy.max_scale_up_step)
        step_note = f" (maxScaleUpStep {policy.max_scale_up_step})" if target < up_target else ""
        return (
            target,
            SCALE_UP,
            f"load {load_text} asks for {up_target} replicas at {policy.target_queue_per_replica} per "
            f"replica; scaling {current} -> {target}{step_note}",
        )

    if not signal.complete:
        # A partial reading is a lower bound of the load: enough to scale up, never to scale down
        # or to call the track steady.
        return (
            current,
            HOLD_STALE_METRICS,
            f"holding {current} replicas (recommendation from partial data {recommendation}): "
            f"{signal.problem or 'partial load reading'}",
        )

    if recommendation < current:
        window_high = _window_high(state.highs, now, policy.scale_down_window_seconds)
        window = _format_seconds(policy.scale_down_window_seconds)
        if window_high >= current:
            return (
                current,
                HOLD_WITHIN_WINDOW,
                f"recommendation {recommendation} < {current} replicas, but {window_high} was recommended "
                f"within scaleDownWindowSeconds {window}",
            )
        observed_for = now - state.observing_since if state.observing_since is not None else 0.0
        if observed_for < policy.scale_down_window_seconds:
            return (
                current,
                HOLD_WITHIN_WINDOW,
                f"recommendation {recommendation} < {current} replicas for {_format_seconds(observed_for)} "
                f"of scaleDownWindowSeconds {window}",
            )
        if window_high == 0 and not signal.wake_visible:
            # At zero replicas only the router's pending gauge can wake the track again.
            if current == 1:
                return (
                    current,
                    HOLD_NO_WAKE_SIGNAL,
                    "not scaling to 0: the router's pending-requests gauge is not visible, so a new "
                    "request could not wake the track",
                )
            window_high = 1
        return (
            window_high,
            SCALE_DOWN_AFTER_WINDOW,
            f"recommendations stayed at or below {window_high} for scaleDownWindowSeconds {window} "
            f"(load {load_text}); scaling {current} -> {window_high}",
        )

    unbounded = policy.unbounded_recommendation(signal.load or 0.0)
    if unbounded > current and current == policy.max_replicas:
        return current, AT_MAX, f"load {load_text} asks for {unbounded} replicas; maxReplicas is {current}"
    if unbounded < current and current == policy.min_replicas:
        return current, AT_MIN, f"load {load_text}; minReplicas is {current}"
    return current, STEADY, f"load {load_text} fits {current} replicas"


def _event(current: int, desired: int, reason: str, message: str, last_reason: str | None) -> Event | None:
    """One Event per change of replicas, and one when a hold on bad metrics starts (not every tick)."""
    if desired != current:
        return Event("Normal", reason, message)
    if reason in (HOLD_STALE_METRICS, HOLD_NO_WAKE_SIGNAL) and last_reason != reason:
        return Event("Warning", reason, message)
    return None


def _up_target(state: TrackState, recommendation: int, policy: Policy) -> int:
    if policy.scale_up_window_seconds <= 0 or not state.lows:
        return recommendation
    # _push_low already dropped entries older than the window, so the head is the window's minimum.
    return state.lows[0][1]


def _in_window(t: float, now: float, window: float) -> bool:
    # An entry stamped at t was in force until t (a re-stamped one) or from t on (the current
    # reading, t == now): the window (now - window, now] holds it when t is after its start.
    return t > now - window or t == now


def _window_high(highs: tuple[tuple[float, int], ...], now: float, window: float) -> int:
    inside = [r for t, r in highs if _in_window(t, now, window)]
    return inside[0] if inside else 0


def _push_high(
    queue: tuple[tuple[float, int], ...], now: float, value: int, window: float
) -> tuple[tuple[float, int], ...]:
    kept = [(t, r) for t, r in queue if t > now - window and r > value]
    return (*kept, (now, value))


def _push_low(
    queue: tuple[tuple[float, int], ...], now: float, value: int, window: float
) -> tuple[tuple[float, int], ...]:
    kept = [(t, r) for t, r in queue if t > now - window and r < value]
    return (*kept, (now, value))


def _optional_time(data: dict[str, Any], key: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise StateError(f"autoscaler state field {key} must be a number of seconds, got {value!r}")
    return float(value)


def _queue(data: dict[str, Any], key: str) -> tuple[tuple[float, int], ...]:
    value = data.get(key) or []
    entries = []
    if not isinstance(value, list):
        raise StateError(f"autoscaler state field {key} must be a list of [time, replicas], got {value!r}")
    for entry in value:
        ok = (
            isinstance(entry, list | tuple)
            and len(entry) == 2
            and isinstance(entry[0], int | float)
            and not isinstance(entry[1], bool)
            and isinstance(entry[1], int)
            and entry[1] >= 0
        )
        if not ok:
            raise StateError(f"autoscaler state field {key} has a bad entry {entry!r}; want [time, replicas]")
        entries.append((float(entry[0]), int(entry[1])))
    return tuple(entries)


def format_time(epoch_seconds: float | None) -> str | None:
    """RFC 3339 in UTC, as Kubernetes writes times in status."""
    if epoch_seconds is None:
        return None
    return datetime.fromtimestamp(epoch_seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _format_load(load: float | None) -> str:
    if load is None:
        return "unknown"
    return f"{load:g}"


def _format_seconds(seconds: float) -> str:
    return f"{seconds:g}s"


__all__ = [
    "Decision",
    "Event",
    "Policy",
    "Signal",
    "StateError",
    "TrackState",
    "decide",
    "format_time",
]
