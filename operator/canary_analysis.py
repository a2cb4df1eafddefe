"""The canary analysis decision: hold, advance, promote or roll back, from one window of metrics.

Pure: the caller reads the window's per-track numbers from the router's series in Prometheus
(:func:`window_queries` says which), calls :func:`decide` with the :class:`StepState` it stored on
the previous check, applies the weight of the returned :class:`Verdict` and stores its state.

The rules (docs/canary.md explains them for operators):

* a step lasts at least ``interval_seconds``; the first check comes one interval after the step began;
* a check needs ``min_requests`` canary requests in the window: fewer hold the step (too little
  traffic, or no data at all, never counts as healthy, nor as a failure);
* the canary fails a check when its 5xx rate is above ``max_error_rate`` and above stable's over the
  same window (an outage both tracks share is not the canary's), or when its latency quantile is more
  than ``max_latency_ratio`` times stable's; without a stable baseline the latency check holds;
* ``max_failed_checks`` failed checks in one analysis roll back (weight 0); passing checks do not
  reset the count, so a canary that fails every other check is still rolled back;
* a passing check advances to the next weight step; passing the last step promotes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

# Actions, and the phases status.canary.phase shows.
HOLD = "Hold"
ADVANCE = "Advance"
PROMOTE = "Promote"
ROLLBACK = "Rollback"

PENDING = "Pending"  # waiting for a ready canary pod; weight 0
PROGRESSING = "Progressing"
PAUSED = "Paused"
PROMOTING = "Promoting"
ROLLED_BACK = "RolledBack"
PROMOTED = "Promoted"  # the new stable is ready; the canary gets no traffic and is scaled to 0
FAILED = "Failed"  # the analysis cannot run (no Prometheus); weight 0
PHASES = (PENDING, PROGRESSING, PAUSED, PROMOTING, PROMOTED, ROLLED_BACK, FAILED)
FINISHED_PHASES = frozenset({PROMOTING, PROMOTED, ROLLED_BACK, FAILED})

# Verdict reasons (CamelCase: condition reasons and Event reasons).
STEP_NOT_DUE = "StepNotDue"
TOO_LITTLE_TRAFFIC = "TooLittleTraffic"
NO_LATENCY_BASELINE = "NoLatencyBaseline"
CHECK_PASSED = "CheckPassed"
CHECK_FAILED = "CheckFailed"
ANALYSIS_PAUSED = "AnalysisPaused"
ANALYSIS_FINISHED = "AnalysisFinished"


# What the latency ratio compares: the router's time to the first response byte (the first token of
# a streamed answer) or the whole request's duration.
TIME_TO_FIRST_TOKEN = "timeToFirstToken"
REQUEST_LATENCY = "requestLatency"
LATENCY_METRICS = {TIME_TO_FIRST_TOKEN: "pixtral_router_time_to_first_byte_seconds",
                   REQUEST_LATENCY: "pixtral_router_request_duration_seconds"}


class PolicyError(ValueError):
    """An analysis policy that cannot be followed; the message names the field."""


@dataclass(frozen=True)
class Policy:
    """spec.canary.analysis: the weight steps and the thresholds of a check."""

    steps: tuple[int, ...] = (5, 20, 50)
    interval_seconds: float = 60.0
    min_requests: int = 20
    max_error_rate: float = 0.01
    max_latency_ratio: float = 1.5
    max_failed_checks: int = 2
    latency_quantile: float = 0.95
    latency_metric: str = TIME_TO_FIRST_TOKEN

    def __post_init__(self) -> None:
        path = "spec.canary.analysis"
        if not self.steps:
            raise PolicyError(f"{path}.steps: at least one weight step is needed")
        if any(not 1 <= w <= 99 for w in self.steps) or list(self.steps) != sorted(set(self.steps)):
            # 100 would leave stable no traffic to compare with: promotion follows the last step.
            raise PolicyError(f"{path}.steps: weights must rise strictly within 1..99, got {list(self.steps)}")
        if self.interval_seconds <= 0:
            raise PolicyError(f"{path}.intervalSeconds: must be positive, got {self.interval_seconds}")
        if self.min_requests < 1:
            raise PolicyError(f"{path}.minRequests: must be at least 1, got {self.min_requests}")
        if not 0 <= self.max_error_rate < 1:
            raise PolicyError(f"{path}.maxErrorRate: must be in [0, 1), got {self.max_error_rate}")
        if self.max_latency_ratio < 1:
            raise PolicyError(f"{path}.maxLatencyRatio: must be at least 1, got {self.max_latency_ratio}")
        if self.max_failed_checks < 1:
            raise PolicyError(f"{path}.maxFailedChecks: must be at least 1, got {self.max_failed_checks}")
        if not 0 < self.latency_quantile < 1:
            raise PolicyError(f"{path}.latencyQuantile: must be in (0, 1), got {self.latency_quantile}")
        if self.latency_metric not in LATENCY_METRICS:
            raise PolicyError(f"{path}.latencyMetric: must be one of {', '.join(LATENCY_METRICS)}, got {self.latency_metric!r}")

    @classmethod
    def from_spec(cls, analysis: dict[str, Any]) -> Policy:
        fields = {"steps": "steps", "intervalSeconds": "interval_seconds", "minRequests": "min_requests",
                  "maxErrorRate": "max_error_rate", "maxLatencyRatio": "max_latency_ratio",
                  "maxFailedChecks": "max_failed_checks", "latencyQuantile": "latency_quantile",
                  "latencyMetric": "latency_metric"}
        unknown = sorted(set(analysis) - set(fields))
        if unknown:
            raise PolicyError(f"spec.canary.analysis: unknown field(s) {', '.join(unknown)}")
        values = {fields[k]: (tuple(v) if k == "steps" else v) for k, v in analysis.items()}
        return cls(**values)


@dataclass(frozen=True)
class TrackWindow:
    """One track's numbers over the check's window: requests answered, of them 5xx, and the latency
    quantile in seconds (None when the track had no requests or Prometheus had no histogram)."""

    requests: float
    errors: float
    latency: float | None

    @property
    def error_rate(self) -> float | None:
        # Prometheus extrapolates the two counters' increases separately, so the errors of a window
        # where every answer failed can read a little above its requests (100.08% was seen).
        return min(1.0, self.errors / self.requests) if self.requests > 0 else None


@dataclass(frozen=True)
class Window:
    canary: TrackWindow | None  # None: the metrics could not be read at all
    stable: TrackWindow | None


@dataclass(frozen=True)
class StepState:
    """What the analysis remembers between checks (stored in status.canary by the operator)."""

    phase: str = PROGRESSING
    step: int = 0  # index into Policy.steps
    step_started_at: float = 0.0
    failed_checks: int = 0
    paused: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "step": self.step, "stepStartedAt": self.step_started_at,
                "failedChecks": self.failed_checks, "paused": self.paused}

    @classmethod
    def from_dict(cls, stored: dict[str, Any]) -> StepState:
        return cls(phase=str(stored.get("phase", PROGRESSING)), step=int(stored.get("step", 0)),
                   step_started_at=float(stored.get("stepStartedAt", 0.0)),
                   failed_checks=int(stored.get("failedChecks", 0)), paused=bool(stored.get("paused", False)))

    @classmethod
    def start(cls, now: float) -> StepState:
        return cls(step_started_at=now)


@dataclass(frozen=True)
class Verdict:
    action: str
    reason: str
    message: str
    weight: int  # the canary weight the router should apply now
    state: StepState


def current_weight(policy: Policy, state: StepState) -> int:
    if state.phase in (ROLLED_BACK, PROMOTED, PENDING, FAILED):
        return 0
    if state.phase == PROMOTING:
        return policy.steps[-1]  # the canary keeps its share until the new stable is ready
    return policy.steps[min(state.step, len(policy.steps) - 1)]


def check(policy: Policy, window: Window) -> tuple[str, str]:
    """(reason, message) of one check: CHECK_PASSED, CHECK_FAILED or a reason to hold."""
    canary, stable = window.canary, window.stable
    if canary is None or canary.requests < policy.min_requests:
        seen = 0 if canary is None else int(canary.requests)
        return TOO_LITTLE_TRAFFIC, f"{seen} canary requests in the window, {policy.min_requests} needed"
    canary_rate = canary.error_rate or 0.0
    stable_rate = (stable.error_rate if stable is not None else None) or 0.0
    if canary_rate > policy.max_error_rate and canary_rate > stable_rate:
        return CHECK_FAILED, (f"canary error rate {canary_rate:.2%} above the threshold {policy.max_error_rate:.2%} "
                              f"(stable {stable_rate:.2%})")
    if stable is None or stable.latency is None or stable.latency <= 0 or canary.latency is None:
        return NO_LATENCY_BASELINE, "no latency quantile for both tracks in the window"
    ratio = canary.latency / stable.latency
    quantile = f"p{policy.latency_quantile * 100:g}"
    if ratio > policy.max_latency_ratio:
        return CHECK_FAILED, (f"canary {quantile} latency {canary.latency:.3f}s is {ratio:.2f}x stable's "
                              f"{stable.latency:.3f}s, above the threshold {policy.max_latency_ratio:g}x")
    return CHECK_PASSED, (f"error rate {canary_rate:.2%} (stable {stable_rate:.2%}), {quantile} latency ratio "
                          f"{ratio:.2f}x over {int(canary.requests)} canary requests")


def decide(policy: Policy, state: StepState, window: Window, now: float) -> Verdict:
    weight = current_weight(policy, state)
    if state.phase in FINISHED_PHASES:
        return Verdict(HOLD, ANALYSIS_FINISHED, f"analysis {state.phase}", weight, state)
    if state.paused:
        return Verdict(HOLD, ANALYSIS_PAUSED, f"paused at weight {weight}", weight, replace(state, phase=PAUSED))
    state = replace(state, phase=PROGRESSING)
    due = state.step_started_at + policy.interval_seconds
    if now < due:
        return Verdict(HOLD, STEP_NOT_DUE, f"weight {weight} until the step's interval has passed", weight, state)
    reason, message = check(policy, window)
    if reason == CHECK_FAILED:
        failed = state.failed_checks + 1
        if failed >= policy.max_failed_checks:
            rolled = replace(state, phase=ROLLED_BACK, failed_checks=failed)
            return Verdict(ROLLBACK, CHECK_FAILED,
                           f"rolled back at weight {weight} after {failed} failed checks: {message}", 0, rolled)
        return Verdict(HOLD, CHECK_FAILED, f"check {failed} of {policy.max_failed_checks} failed: {message}",
                       weight, replace(state, failed_checks=failed, step_started_at=now))
    if reason != CHECK_PASSED:
        return Verdict(HOLD, reason, message, weight, state)
    if state.step + 1 >= len(policy.steps):
        return Verdict(PROMOTE, CHECK_PASSED, f"promoting after the last step (weight {weight}): {message}",
                       weight, replace(state, phase=PROMOTING))
    advanced = replace(state, step=state.step + 1, step_started_at=now)
    next_weight = policy.steps[advanced.step]
    return Verdict(ADVANCE, CHECK_PASSED, f"weight {weight} -> {next_weight}: {message}", next_weight, advanced)


def window_queries(namespace: str, deployment: str, track: str, window_seconds: float, quantile: float,
                   latency_metric: str = TIME_TO_FIRST_TOKEN) -> dict[str, str]:
    """PromQL for one track's :class:`TrackWindow` from the router's series: requests, 5xx, latency."""
    histogram = LATENCY_METRICS[latency_metric]
    selector = f'namespace="{namespace}", deployment="{deployment}", track="{track}"'
    window = f"{int(window_seconds)}s"
    return {
        "requests": f"sum(increase(pixtral_router_requests_total{{{selector}}}[{window}]))",
        "errors": f'sum(increase(pixtral_router_requests_total{{{selector}, code=~"5.."}}[{window}]))',
        "latency": (f"histogram_quantile({quantile}, sum by (le) "
                    f"(rate({histogram}_bucket{{{selector}}}[{window}])))"),
    }
