"""The canary analysis loop with the reconcile, against the recording fake API and canned Prometheus
answers: steps, promotion through a stable rollout, rollback, retirement, manual control."""

import json

import pytest
from fakekube import FakeKube, gpu_node, pxd
from pixtral_operator import canary_analysis as A
from pixtral_operator import canary_state as CS
from pixtral_operator.canary_loop import RETIRE_AFTER_SECONDS, CanaryLoop
from pixtral_operator.prometheus import QueryResult, Sample
from pixtral_operator.reconcile import reconcile
from pixtral_operator.settings import OperatorSettings

ANALYSIS = {"steps": [10, 50], "intervalSeconds": 10, "minRequests": 20, "maxErrorRate": 0.05,
            "maxLatencyRatio": 1.5, "maxFailedChecks": 2}
SPEC = {"replicas": 1, "canary": {"engine": {"maxNumSeqs": 8}, "analysis": ANALYSIS}}
SETTINGS = OperatorSettings()


class WindowPrometheus:
    """Answers the window queries per track from numbers the test sets."""

    def __init__(self) -> None:
        self.tracks = {"canary": {"requests": 100.0, "errors": 0.0, "latency": 0.2},
                       "stable": {"requests": 400.0, "errors": 0.0, "latency": 0.2}}
        self.queries: list[str] = []

    async def query(self, promql: str, at: float | None = None) -> QueryResult:
        self.queries.append(promql)
        track = self.tracks["canary" if 'track="canary"' in promql else "stable"]
        if promql.startswith("histogram_quantile"):
            value = track["latency"]
            if value is None:
                return QueryResult.failure("query returned a non-finite value (nan)")
        elif 'code=~"5.."' in promql:
            value = track["errors"]
        else:
            value = track["requests"]
        return QueryResult(ok=True, samples=(Sample({}, value, 0.0),))


class Bed:
    """The fake API, the reconcile and the loop, wired as the kopf handlers wire them."""

    def __init__(self, spec=SPEC, prometheus=None):
        self.kube = FakeKube(nodes=[gpu_node("gpu-0")])  # status patches merge as RFC 7386 says
        self.body = pxd(spec=json.loads(json.dumps(spec)))
        self.prom = WindowPrometheus() if prometheus is None else prometheus
        self.loop = CanaryLoop(self.kube, self.prom or None, SETTINGS)
        self.events = []
        self.reconcile()

    def status(self):
        return self.kube.statuses.get(("team", "demo"), {})

    def reconcile(self):
        self.body["status"] = self.status()
        out = reconcile(self.body, self.kube, SETTINGS, now="t")
        self.events += out.events
        self.body["status"] = self.status()
        return out

    async def tick(self, now):
        self.body["status"] = self.status()
        result = await self.loop.tick(self.body, now=now)
        self.events += result.events
        if result.status_patch is not None:
            self.kube.patch_status("team", "demo", result.status_patch)
            if result.rerender:
                self.reconcile()
        return result

    def canary(self):
        return self.status().get("canary") or {}

    def weight(self):
        cm = self.kube.get("v1", "ConfigMap", "team", "demo-router")
        return json.loads(cm["data"]["config.json"])["canary"]["weight"]

    def deployment(self, track):
        return self.kube.get("apps/v1", "Deployment", "team", f"demo-{track}")

    def ready(self, track, n=1):
        self.kube.set_deployment_status("team", f"demo-{track}", replicas=n, readyReplicas=n, updatedReplicas=n)

    def reasons(self):
        return [e.reason for e in self.events]

    def condition(self, type_):
        return next((c for c in self.status().get("conditions", []) if c["type"] == type_), None)


def max_num_seqs(bed, track):
    env = bed.deployment(track)["spec"]["template"]["spec"]["containers"][0]["env"]
    return next(e["value"] for e in env if e["name"] == "PIXTRAL_MAX_NUM_SEQS")


async def progressing(bed, now=1000.0):
    """The canary is ready: the analysis starts its first step."""
    bed.ready("stable")
    bed.ready("canary")
    await bed.tick(now)
    assert bed.canary()["phase"] == A.PROGRESSING
    return now


async def test_reconcile_alone_holds_the_canary_at_weight_0_with_a_pod_and_leaves_status_canary_to_the_loop():
    bed = Bed()
    assert bed.weight() == 0
    assert bed.deployment("canary")["spec"]["replicas"] == 1  # so that it can become ready
    assert "canary" not in bed.status()
    assert bed.condition("CanaryHealthy")["status"] == "Unknown"


async def test_a_good_canary_steps_promotes_through_a_stable_rollout_then_retires():
    bed = Bed()
    await bed.tick(999.0)
    assert bed.canary()["phase"] == A.PENDING and bed.weight() == 0  # no ready canary pod yet
    now = await progressing(bed)
    assert bed.weight() == 10 and bed.canary()["weight"] == 10
    await bed.tick(now + 5)
    assert bed.canary()["step"] == 0  # the interval has not passed
    await bed.tick(now + 10)
    assert bed.weight() == 50 and bed.canary()["step"] == 1
    check = bed.canary()["lastCheck"]
    assert check["reason"] == A.CHECK_PASSED and check["canary"]["requests"] == 100
    assert bed.condition("CanaryHealthy")["status"] == "True"
    assert max_num_seqs(bed, "stable") == "64"
    await bed.tick(now + 20)
    assert bed.canary()["phase"] == A.PROMOTING
    assert bed.weight() == 50  # the canary keeps its share while stable rolls
    assert max_num_seqs(bed, "stable") == "8"  # the canary's settings, through a rolling update
    await bed.tick(now + 21)
    assert bed.canary()["phase"] == A.PROMOTING  # the new stable is not rolled out yet
    bed.ready("stable")
    await bed.tick(now + 22)
    assert bed.canary()["phase"] == A.PROMOTED and bed.weight() == 0
    assert bed.deployment("canary")["spec"]["replicas"] == 1  # drains first
    await bed.tick(now + 22 + RETIRE_AFTER_SECONDS)
    assert bed.deployment("canary")["spec"]["replicas"] == 0
    assert max_num_seqs(bed, "stable") == "8"
    assert {"CanaryPending", "CanaryProgressing", "CanaryStepAdvanced", "CanaryPromoting", "CanaryPromoted",
            "CanaryRetired"} <= set(bed.reasons())
    # Further ticks and reconciles change nothing: the promoted canary is not analysed again.
    writes = len(bed.kube.writes)
    await bed.tick(now + 100)
    bed.reconcile()
    assert len(bed.kube.writes) == writes


async def test_the_user_folding_the_canary_into_the_spec_restarts_nothing():
    bed = Bed()
    now = await progressing(bed)
    await bed.tick(now + 10)
    await bed.tick(now + 20)
    bed.ready("stable")
    await bed.tick(now + 21)
    promoted = bed.deployment("stable")["metadata"]["annotations"]
    # GitOps: the canary's settings become the stable ones and spec.canary goes.
    bed.body["spec"] = {"replicas": 1, "engine": {"maxNumSeqs": 8}}
    bed.reconcile()
    assert bed.deployment("stable")["metadata"]["annotations"] == promoted  # no second rollout
    assert bed.deployment("canary") is None
    assert bed.status()["canary"] == {"weight": 0, "replicas": 0, "readyReplicas": 0, "phase": "None"}


async def test_an_erroring_canary_is_rolled_back_at_once_and_not_retried_until_its_spec_changes():
    bed = Bed()
    now = await progressing(bed)
    bed.prom.tracks["canary"]["errors"] = 20.0
    await bed.tick(now + 10)
    assert bed.canary()["failedChecks"] == 1 and bed.weight() == 10
    assert bed.condition("CanaryHealthy")["status"] == "False"
    await bed.tick(now + 20)
    assert bed.canary()["phase"] == A.ROLLED_BACK
    assert bed.weight() == 0  # in the same tick
    rollback = next(e for e in bed.events if e.reason == "CanaryRolledBack")
    assert rollback.type == "Warning"
    assert "error rate 20.00% above the threshold 5.00%" in rollback.message
    assert bed.deployment("canary")["spec"]["replicas"] == 1
    await bed.tick(now + 20 + RETIRE_AFTER_SECONDS)
    assert bed.deployment("canary")["spec"]["replicas"] == 0
    assert bed.condition("CanaryHealthy")["status"] == "False"
    bed.prom.tracks["canary"]["errors"] = 0.0
    await bed.tick(now + 100)
    bed.reconcile()
    assert bed.canary()["phase"] == A.ROLLED_BACK and bed.weight() == 0
    # A new canary spec: a new analysis.
    bed.body["spec"]["canary"]["engine"]["maxNumSeqs"] = 16
    bed.reconcile()
    assert bed.deployment("canary")["spec"]["replicas"] == 1 and bed.weight() == 0
    await bed.tick(now + 200)
    assert bed.canary()["phase"] == A.PROGRESSING  # the old ready status still stands in the fake
    assert "finishedAt" not in bed.canary() and "lastCheck" not in bed.canary()


async def test_a_slow_canary_is_rolled_back_on_the_latency_ratio():
    bed = Bed(spec={**SPEC, "canary": {**SPEC["canary"], "analysis": {**ANALYSIS, "maxFailedChecks": 1}}})
    now = await progressing(bed)
    bed.prom.tracks["canary"]["latency"] = 0.9
    await bed.tick(now + 10)
    assert bed.canary()["phase"] == A.ROLLED_BACK and bed.weight() == 0
    message = next(e for e in bed.events if e.reason == "CanaryRolledBack").message
    assert "4.50x stable's" in message and "threshold 1.5x" in message
    assert bed.canary()["lastCheck"]["canary"]["latencySeconds"] == 0.9
    # The latency ratio compares the router's time to first byte by default.
    assert any("pixtral_router_time_to_first_byte_seconds_bucket" in q for q in bed.prom.queries)


async def test_too_little_traffic_or_no_metrics_hold_the_step():
    bed = Bed()
    now = await progressing(bed)
    bed.prom.tracks["canary"]["requests"] = 5.0
    bed.prom.tracks["canary"]["errors"] = 5.0  # all failed, but too few to judge
    await bed.tick(now + 10)
    assert bed.canary()["phase"] == A.PROGRESSING and bed.canary()["failedChecks"] == 0
    assert bed.canary()["lastCheck"]["reason"] == A.TOO_LITTLE_TRAFFIC and bed.weight() == 10


async def test_without_prometheus_the_analysis_fails_at_weight_0():
    bed = Bed(prometheus=False)
    bed.ready("canary")
    await bed.tick(1000.0)
    assert bed.canary()["phase"] == A.FAILED and bed.weight() == 0
    assert "CanaryAnalysisFailed" in bed.reasons()


async def test_manual_pause_resume_promote_and_abort_by_annotation():
    bed = Bed()
    now = await progressing(bed)
    bed.body["metadata"]["annotations"] = {CS.ACTION_ANNOTATION: "pause"}
    await bed.tick(now + 1)
    assert bed.canary()["phase"] == A.PAUSED
    bed.prom.tracks["canary"]["errors"] = 50.0
    await bed.tick(now + 30)
    assert bed.canary()["phase"] == A.PAUSED and bed.weight() == 10  # no check while paused
    bed.body["metadata"]["annotations"][CS.ACTION_ANNOTATION] = "resume"
    await bed.tick(now + 31)
    assert bed.canary()["phase"] == A.PROGRESSING and bed.canary()["stepStartedAt"] == now + 31
    bed.prom.tracks["canary"]["errors"] = 0.0
    bed.body["metadata"]["annotations"][CS.ACTION_ANNOTATION] = "promote"
    await bed.tick(now + 32)
    assert bed.canary()["phase"] == A.PROMOTING and bed.weight() == 50
    bed.body["metadata"]["annotations"][CS.ACTION_ANNOTATION] = "abort"
    await bed.tick(now + 33)
    assert bed.canary()["phase"] == A.PROMOTING  # a finished analysis ignores actions
    assert [r for r in bed.reasons() if r.startswith("CanaryAction") or r in
            ("CanaryPaused", "CanaryResumed")] == ["CanaryPaused", "CanaryResumed", "CanaryActionIgnored"]


async def test_abort_rolls_back_and_an_unknown_action_is_reported():
    bed = Bed()
    now = await progressing(bed)
    bed.body["metadata"]["annotations"] = {CS.ACTION_ANNOTATION: "stop"}
    await bed.tick(now + 1)
    assert "CanaryActionUnknown" in bed.reasons() and bed.canary()["phase"] == A.PROGRESSING
    bed.body["metadata"]["annotations"] = {CS.ACTION_ANNOTATION: "abort"}
    await bed.tick(now + 2)
    assert bed.canary()["phase"] == A.ROLLED_BACK and bed.weight() == 0
    assert bed.condition("CanaryHealthy")["reason"] == "Aborted"


async def test_removing_the_analysis_clears_the_loops_status_keys():
    bed = Bed()
    await progressing(bed)
    del bed.body["spec"]["canary"]["analysis"]
    bed.body["spec"]["canary"]["weight"] = 30
    bed.reconcile()
    assert set(bed.status()["canary"]) == {"weight", "replicas", "readyReplicas", "phase"}
    assert bed.weight() == 30 and bed.condition("CanaryHealthy") is None


@pytest.mark.parametrize("analysis, field", [
    ({"steps": [50, 20]}, "steps"),
    ({"intervalSeconds": 0}, "intervalSeconds"),
    ({"latencyMetric": "p99"}, "latencyMetric"),
])
def test_an_unfollowable_policy_is_refused_by_the_reconcile_naming_the_field(analysis, field):
    bed = Bed(spec={"canary": {"analysis": analysis}})
    degraded = bed.condition("Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "InvalidCanaryAnalysis"
    assert field in degraded["message"]
    assert bed.kube.get("apps/v1", "Deployment", "team", "demo-canary") is None
