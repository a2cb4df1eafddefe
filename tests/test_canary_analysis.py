"""The canary analysis decision (operator/canary_analysis.py): examples, then properties over
arbitrary windows and policies."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pixtral_operator import canary_analysis as A
from pixtral_operator.canary_analysis import Policy, StepState, TrackWindow, Window, decide

POLICY = Policy(steps=(5, 20, 50), interval_seconds=60, min_requests=20, max_error_rate=0.01,
                max_latency_ratio=1.5, max_failed_checks=2)
HEALTHY = Window(canary=TrackWindow(100, 0, 0.20), stable=TrackWindow(900, 0, 0.18))


def run(policy, windows, start=0.0):
    """Checks once per interval from `start`; the verdicts in order."""
    state, verdicts = StepState.start(start), []
    for i, window in enumerate(windows, start=1):
        verdict = decide(policy, state, window, start + i * policy.interval_seconds)
        verdicts.append(verdict)
        state = verdict.state
    return verdicts


def test_a_healthy_canary_walks_every_step_then_promotes():
    verdicts = run(POLICY, [HEALTHY] * 3)
    assert [(v.action, v.weight) for v in verdicts] == [(A.ADVANCE, 20), (A.ADVANCE, 50), (A.PROMOTE, 50)]
    assert verdicts[-1].state.phase == A.PROMOTING
    # Finished: later checks change nothing.
    after = decide(POLICY, verdicts[-1].state, HEALTHY, 10_000)
    assert (after.action, after.reason, after.weight) == (A.HOLD, A.ANALYSIS_FINISHED, 50)


def test_a_step_is_not_judged_before_its_interval():
    verdict = decide(POLICY, StepState.start(0), HEALTHY, 59)
    assert (verdict.action, verdict.reason, verdict.weight) == (A.HOLD, A.STEP_NOT_DUE, 5)


def test_too_little_traffic_holds_and_never_counts_as_healthy_or_failed():
    quiet = Window(canary=TrackWindow(19, 19, 9.0), stable=TrackWindow(900, 0, 0.2))
    for window in (quiet, Window(canary=None, stable=None)):
        verdicts = run(POLICY, [window] * 10)
        assert {(v.action, v.reason, v.weight) for v in verdicts} == {(A.HOLD, A.TOO_LITTLE_TRAFFIC, 5)}
        assert verdicts[-1].state.failed_checks == 0


def test_errors_roll_back_after_the_allowed_failed_checks_naming_rate_and_threshold():
    failing = Window(canary=TrackWindow(100, 30, 0.2), stable=TrackWindow(900, 0, 0.2))
    first, second = run(POLICY, [failing, failing])
    assert (first.action, first.reason, first.weight) == (A.HOLD, A.CHECK_FAILED, 5)
    assert (second.action, second.weight, second.state.phase) == (A.ROLLBACK, 0, A.ROLLED_BACK)
    assert "error rate 30.00%" in second.message and "threshold 1.00%" in second.message
    assert decide(POLICY, second.state, HEALTHY, 10_000).weight == 0  # not retried


def test_an_outage_both_tracks_share_is_not_the_canarys():
    both = Window(canary=TrackWindow(100, 30, 0.2), stable=TrackWindow(900, 300, 0.2))
    assert [v.action for v in run(POLICY, [both] * 3)] == [A.ADVANCE, A.ADVANCE, A.PROMOTE]


def test_a_slow_canary_rolls_back_on_the_latency_ratio():
    slow = Window(canary=TrackWindow(100, 0, 0.6), stable=TrackWindow(900, 0, 0.2))
    verdicts = run(POLICY, [slow, slow])
    assert verdicts[-1].action == A.ROLLBACK
    assert "3.00x stable's" in verdicts[-1].message and "threshold 1.5x" in verdicts[-1].message


def test_no_latency_baseline_holds():
    no_stable = Window(canary=TrackWindow(100, 0, 0.2), stable=TrackWindow(0, 0, None))
    verdict = run(POLICY, [no_stable])[0]
    assert (verdict.action, verdict.reason) == (A.HOLD, A.NO_LATENCY_BASELINE)


def test_passing_checks_do_not_reset_the_failed_count():
    failing = Window(canary=TrackWindow(100, 30, 0.2), stable=TrackWindow(900, 0, 0.2))
    verdicts = run(POLICY, [failing, HEALTHY, failing])
    assert [v.action for v in verdicts] == [A.HOLD, A.ADVANCE, A.ROLLBACK]


def test_paused_holds_at_the_current_weight():
    state = StepState(step=1, step_started_at=0, paused=True)
    verdict = decide(POLICY, state, HEALTHY, 1_000)
    assert (verdict.action, verdict.reason, verdict.weight, verdict.state.phase) == (A.HOLD, A.ANALYSIS_PAUSED, 20, A.PAUSED)


def test_state_round_trips_through_its_dict():
    state = StepState(phase=A.PROGRESSING, step=2, step_started_at=12.5, failed_checks=1)
    assert StepState.from_dict(state.to_dict()) == state


@pytest.mark.parametrize(("analysis", "field"), [
    ({"steps": []}, "steps"),
    ({"steps": [5, 5]}, "steps"),
    ({"steps": [50, 20]}, "steps"),
    ({"steps": [5, 100]}, "steps"),
    ({"intervalSeconds": 0}, "intervalSeconds"),
    ({"minRequests": 0}, "minRequests"),
    ({"maxErrorRate": 1}, "maxErrorRate"),
    ({"maxLatencyRatio": 0.5}, "maxLatencyRatio"),
    ({"maxFailedChecks": 0}, "maxFailedChecks"),
    ({"latencyQuantile": 1}, "latencyQuantile"),
    ({"weights": [5]}, "weights"),
])
def test_bad_policies_are_refused_naming_the_field(analysis, field):
    with pytest.raises(A.PolicyError, match=field):
        Policy.from_spec(analysis)


def test_window_queries_select_the_track_from_the_routers_series():
    queries = A.window_queries("team-a", "chat", "canary", 60, 0.95)
    assert set(queries) == {"requests", "errors", "latency"}
    for promql in queries.values():
        assert 'namespace="team-a", deployment="chat", track="canary"' in promql
    assert 'code=~"5.."' in queries["errors"] and "[60s]" in queries["errors"]
    assert queries["latency"].startswith("histogram_quantile(0.95,")


# ---------------------------------------------------------------- properties

track_windows = st.one_of(st.none(), st.builds(
    lambda requests, error_share, latency: TrackWindow(requests, requests * error_share, latency),
    st.integers(0, 2_000), st.floats(0, 1), st.one_of(st.none(), st.floats(0.001, 30))))
windows = st.builds(Window, canary=track_windows, stable=track_windows)
policies = st.builds(
    Policy,
    steps=st.lists(st.integers(1, 99), min_size=1, max_size=5, unique=True).map(lambda s: tuple(sorted(s))),
    interval_seconds=st.floats(1, 600), min_requests=st.integers(1, 100), max_error_rate=st.floats(0, 0.5),
    max_latency_ratio=st.floats(1, 5), max_failed_checks=st.integers(1, 5))


@settings(max_examples=300, deadline=None)
@given(policies, st.lists(windows, min_size=1, max_size=25))
def test_properties_of_any_sequence_of_checks(policy, sequence):
    verdicts = run(policy, sequence)
    weights = [v.weight for v in verdicts]
    for verdict, window, before in zip(verdicts, sequence, [StepState.start(0), *(v.state for v in verdicts[:-1])], strict=True):
        reason, _ = A.check(policy, window)
        # The weight only rises, by one step, on a passed check; it only falls on a rollback, to 0.
        if verdict.action == A.ADVANCE:
            assert reason == A.CHECK_PASSED and verdict.weight == policy.steps[before.step + 1]
        if verdict.action == A.ROLLBACK:
            assert reason == A.CHECK_FAILED and verdict.weight == 0
            assert verdict.state.failed_checks == policy.max_failed_checks
        # Too little traffic or no data never moves anything.
        if window.canary is None or window.canary.requests < policy.min_requests:
            assert verdict.action == A.HOLD or before.phase in A.FINISHED_PHASES
        assert verdict.weight in (0, *policy.steps)
    assert sum(v.action == A.ROLLBACK for v in verdicts) <= 1
    assert sum(v.action == A.PROMOTE for v in verdicts) <= 1
    # Once finished, the weight is fixed.
    for i, verdict in enumerate(verdicts):
        if verdict.state.phase in A.FINISHED_PHASES:
            assert all(w == verdict.weight for w in weights[i:])


def test_an_error_rate_never_reads_above_one_when_the_extrapolated_errors_exceed_the_requests():
    # Seen on the local cluster: a hung canary's window read 3.2 requests and 3.2026 errors.
    assert TrackWindow(requests=3.2, errors=3.2026, latency=None).error_rate == 1.0
    assert TrackWindow(requests=4.0, errors=1.0, latency=None).error_rate == 0.25
