"""The autoscaler timer body against a recording fake API and canned Prometheus answers."""

from fakekube import FakeKube, gpu_node, pxd
from pixtral_operator.jsontree import merge_patch
from pixtral_operator.prometheus import QueryResult, Sample
from pixtral_operator.reconcile import reconcile
from pixtral_operator.scale_loop import Scaler
from pixtral_operator.settings import OperatorSettings

SPEC = {"replicas": 1, "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 3, "targetQueuePerReplica": 2, "scaleDownWindowSeconds": 30}}


class CannedPrometheus:
    """Answers the engine/router queries from values the test changes between ticks: the same values
    for every track of every deployment in `deployments` (the fleet queries group by namespace,
    deployment and track; a spec's own prometheusQuery gets one unlabelled sample)."""

    def __init__(self) -> None:
        self.load = 0.0
        self.pods = 1
        self.pending = 0.0
        self.now = 1000.0
        self.fail = False
        self.deployments = ("demo",)
        self.queries: list[str] = []

    async def query(self, promql: str, at: float | None = None) -> QueryResult:
        self.queries.append(promql)
        if self.fail:
            return QueryResult.failure("connection refused")
        if not promql.startswith(("sum by", "count by", "min by")):
            return QueryResult(ok=True, samples=(Sample({}, self.load, self.now),))

        def each(value: float) -> QueryResult:
            return QueryResult(ok=True, samples=tuple(
                Sample({"namespace": "team", "deployment": name, "track": track}, value, self.now)
                for name in self.deployments for track in ("stable", "canary")
            ))

        if promql.startswith("count by"):
            return each(self.pods)
        if promql.startswith("min by"):
            return each(self.now - 1)
        if "pixtral_router_pending_requests" in promql:
            return each(self.pending)
        return each(self.load)


def setup(spec=SPEC):
    kube = FakeKube(nodes=[gpu_node("gpu-0")])
    body = pxd(spec=spec)
    reconcile(body, kube, OperatorSettings(), now="t0")
    kube.set_deployment_status("team", "demo-stable", replicas=1, readyReplicas=1, updatedReplicas=1)
    return kube, body


def replicas(kube):
    return kube.get("apps/v1", "Deployment", "team", "demo-stable")["spec"]["replicas"]


async def test_rise_scales_the_deployment_and_reports():
    kube, body = setup()
    prom = CannedPrometheus()
    scaler = Scaler(kube, prom)
    prom.load = 5
    result = await scaler.tick(body, now=prom.now)
    assert replicas(kube) == 3
    assert result.decisions["stable"].reason == "ScaleUp"
    assert result.decisions["stable"].event is not None
    entry = result.status_patch["autoscaler"]["stable"]
    assert entry["desired"] == 3 and entry["load"] == 5 and entry["reason"] == "ScaleUp"
    assert entry["state"]["replicas"] == 3
    assert result.status_patch["queue"] == 5


async def test_steady_tick_patches_nothing():
    kube, body = setup()
    prom = CannedPrometheus()
    scaler = Scaler(kube, prom)
    first = await scaler.tick(body, now=1000)
    body["status"] = merge_patch(body["status"], first.status_patch)  # as the API stores it
    kube.writes.clear()
    second = await scaler.tick(body, now=1002)
    assert second.status_patch is None and kube.writes == []


async def test_prometheus_down_holds():
    kube, body = setup()
    prom = CannedPrometheus()
    scaler = Scaler(kube, prom)
    prom.load = 5
    await scaler.tick(body, now=1000)
    assert replicas(kube) == 3
    prom.fail = True
    kube.set_deployment_status("team", "demo-stable", replicas=3, readyReplicas=3, updatedReplicas=3)
    for i in range(1, 40):
        result = await scaler.tick(body, now=1000 + i * 2)
    assert replicas(kube) == 3
    assert result.decisions["stable"].reason == "HoldStaleMetrics"


async def test_no_prometheus_url_holds_with_a_reason():
    kube, body = setup()
    result = await Scaler(kube, None).tick(body, now=1000)
    assert replicas(kube) == 1
    assert "PIXTRAL_PROMETHEUS_URL" in result.decisions["stable"].message


async def test_state_survives_an_operator_restart_through_the_status():
    kube, body = setup()
    prom = CannedPrometheus()
    prom.load = 5
    first = await Scaler(kube, prom).tick(body, now=1000)
    body["status"] = merge_patch(body["status"], first.status_patch)
    prom.load = 0
    kube.set_deployment_status("team", "demo-stable", replicas=3, readyReplicas=3, updatedReplicas=3)
    prom.pods = 3
    restarted = Scaler(kube, prom)
    # Within the 30 s window after the high reading nothing scales down, even after a restart.
    result = await restarted.tick(body, now=1010)
    assert replicas(kube) == 3 and result.decisions["stable"].reason != "ScaleDownAfterWindow"


def track_replicas(state, name="demo"):
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("pixtral_operator_track_replicas",
                                     {"namespace": "team", "name": name, "track": "stable", "state": state})


async def test_track_replicas_gauge_follows_the_tick_and_goes_with_the_object():
    kube, body = setup()
    prom = CannedPrometheus()
    scaler = Scaler(kube, prom)
    prom.load = 5
    await scaler.tick(body, now=prom.now)
    assert track_replicas("desired") == 3 and track_replicas("ready") == 1
    scaler.forget("team", "demo")
    assert track_replicas("desired") is None and track_replicas("ready") is None


async def test_the_canary_scales_within_its_own_bounds_and_the_stable_within_its():
    spec = {**SPEC, "canary": {"weight": 20, "engine": {"image": "r:2"}}}  # canary bounds [0, ceil(3 * 0.2)] = [0, 1]
    kube, body = setup(spec)
    canary = kube.get("apps/v1", "Deployment", "team", "demo-canary")
    assert canary["spec"]["replicas"] == 1  # created inside its own bounds
    prom = CannedPrometheus()
    prom.load = 50
    result = await Scaler(kube, prom).tick(body, now=prom.now)
    assert replicas(kube) == 3 and result.decisions["stable"].reason == "ScaleUp"
    assert kube.get("apps/v1", "Deployment", "team", "demo-canary")["spec"]["replicas"] == 1
    assert result.decisions["canary"].reason == "AtMax"
    # The reconcile that follows leaves both counts to the autoscaler.
    reconcile(pxd(spec=spec), kube, OperatorSettings(), now="t1")
    assert replicas(kube) == 3


async def test_a_weight_zero_canary_holds_no_pod_until_a_pinned_request_wakes_it():
    spec = {**SPEC, "canary": {"weight": 0, "engine": {"image": "r:2"}}}
    kube, body = setup(spec)
    assert kube.get("apps/v1", "Deployment", "team", "demo-canary")["spec"]["replicas"] == 0
    prom = CannedPrometheus()
    prom.pods = 0
    prom.pending = 1  # a request pinned to the canary waits at the router
    result = await Scaler(kube, prom).tick(body, now=prom.now)
    assert result.decisions["canary"].reason == "ScaleFromZero"
    assert kube.get("apps/v1", "Deployment", "team", "demo-canary")["spec"]["replicas"] == 1


async def test_a_tick_of_many_objects_costs_four_queries_and_an_override_its_own():
    kube = FakeKube(nodes=[gpu_node("gpu-0")])
    names = [f"pxd-{i}" for i in range(20)]
    bodies = [pxd(name=name, spec=SPEC) for name in names]
    for body in bodies:
        reconcile(body, kube, OperatorSettings(), now="t0")
    prom = CannedPrometheus()
    prom.deployments = tuple(names)
    prom.load = 5
    scaler = Scaler(kube, prom, fleet_seconds=2)
    results = [await scaler.tick(body, now=1000) for body in bodies]
    assert len(prom.queries) == 4
    assert all(r.decisions["stable"].desired == 3 for r in results), "every object read its own share"
    custom = pxd(name="custom", spec={**SPEC, "autoscaling": {**SPEC["autoscaling"], "prometheusQuery": 'sum(q{deployment="{deployment}"})'}})
    reconcile(custom, kube, OperatorSettings(), now="t0")
    await scaler.tick(custom, now=1001)
    assert prom.queries[4:] == ['sum(q{deployment="custom"})']
