"""The watch-fed cache (operator/cache.py) and reconcile-on-change (operator/requeue.py,
handlers/watch.py): a reconcile over a filled cache reads nothing from the API but the Secrets, a
hand edit that arrives as a watch event is applied back, an older event never replaces a newer
write, and a child's event reconciles its owner with bursts coalesced."""

import asyncio

import kopf
import pytest
from fakekube import FakeKube, gpu_node, pxd
from pixtral_operator.cache import UNWATCHED_READ_SECONDS, CachedKube, ObjectCache, controller_owner, gpu_view
from pixtral_operator.conditions import find
from pixtral_operator.handlers.pixtral import register
from pixtral_operator.reconcile import reconcile
from pixtral_operator.requeue import Requeue
from pixtral_operator.scale_loop import Scaler
from pixtral_operator.settings import OperatorSettings

SETTINGS = OperatorSettings()


class CountingKube(FakeKube):
    """FakeKube that also counts every read it answers, by kind."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reads: list[str] = []

    def get(self, api_version, kind, namespace, name):
        self.reads.append(kind)
        return super().get(api_version, kind, namespace, name)

    def list_nodes(self):
        self.reads.append("Node")
        return super().list_nodes()


def cached(nodes=None) -> tuple[CountingKube, ObjectCache, CachedKube]:
    api = CountingKube(nodes=nodes)
    cache = ObjectCache()
    cache.nodes_watched = True
    for node in nodes or ():
        cache.put_node(node)
    return api, cache, CachedKube(api, cache)


def with_status(api: FakeKube, body: dict) -> dict:
    return {**body, "status": api.statuses.get((body["metadata"]["namespace"], body["metadata"]["name"]), {})}


def test_a_reconcile_over_a_filled_cache_reads_nothing_and_the_secret_again_after_a_minute():
    clock = [100.0]
    api = CountingKube(nodes=[gpu_node("gpu-0")])
    cache = ObjectCache()
    cache.nodes_watched = True
    cache.put_node(gpu_node("gpu-0"))
    kube = CachedKube(api, cache, clock=lambda: clock[0])
    body = pxd()
    reconcile(body, kube, SETTINGS, now="t0")  # creates: misses are read once, answers are cached
    assert "Deployment" in api.reads, "a name missing from the cache is looked up (a namesake?)"
    api.reads.clear()
    api.writes.clear()
    out = reconcile(with_status(api, body), kube, SETTINGS, now="t1")
    assert api.writes == [] and out.writes == 0
    assert api.reads == []  # the internal key's Secret, created a moment ago, is not read again
    # Secrets are never watched: after UNWATCHED_READ_SECONDS the pass asks the API again.
    clock[0] += UNWATCHED_READ_SECONDS
    reconcile(with_status(api, body), kube, SETTINGS, now="t2")
    assert api.reads == ["Secret"] and api.writes == []


def test_a_deleted_owner_takes_its_remembered_secret_along_and_a_namesake_reads_it_fresh():
    api, cache, kube = cached([gpu_node("gpu-0")])
    old = pxd()
    reconcile(old, kube, SETTINGS, now="t0")
    assert cache.recent_read("Secret", "team", "demo-apikey", 0.0, float("inf")) is not None
    cache.discard("PixtralDeployment", "team", "demo")
    assert cache.recent_read("Secret", "team", "demo-apikey", 0.0, float("inf")) is None
    # The garbage collector has removed the old one's children: the new namesake creates its own.
    for key in [k for k in api.objects if k[1] != "Node"]:
        del api.objects[key]
        cache.discard(key[1], key[2], key[3])
    new = pxd()
    new["metadata"]["uid"] = "uid-of-the-new-one"
    out = reconcile(new, kube, SETTINGS, now="t1")
    assert not out.problems, out.problems
    assert api.objects[("v1", "Secret", "team", "demo-apikey")]["metadata"]["ownerReferences"][0]["uid"] == "uid-of-the-new-one"


def test_a_hand_edit_arriving_as_a_watch_event_is_applied_back():
    api, cache, kube = cached()
    body = pxd()
    reconcile(body, kube, SETTINGS, now="t0")
    edited = cache.get("ConfigMap", "team", "demo-router")
    edited["data"]["config.json"] = "{}"
    cache.put(edited)  # what the watch delivers after `kubectl edit`
    api.writes.clear()
    reconcile(with_status(api, body), kube, SETTINGS, now="t1")
    assert api.writes == [("apply", "ConfigMap", "demo-router")]
    assert cache.get("ConfigMap", "team", "demo-router")["data"]["config.json"] != "{}"


def test_a_namesake_missing_from_the_cache_is_read_and_left_untouched():
    api, cache, kube = cached()
    api.add({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "demo-router", "namespace": "team"}})
    out = reconcile(pxd(), kube, SETTINGS, now="t0")
    assert find(out.status["conditions"], "Degraded")["reason"] == "ChildConflict"
    assert not [w for w in api.writes if w[0] != "status"]


def test_with_the_watches_running_a_create_reads_no_child_from_the_api_but_a_foreign_namesake():
    api, cache, kube = cached([gpu_node("gpu-0")])
    cache.children_watched = True
    reconcile(pxd(), kube, SETTINGS, now="t0")
    assert api.reads == ["Secret"], api.reads  # every child name is known free; Secrets are never watched
    # Someone else's ConfigMap of a child's name: the watch saw it, so it is read and left alone.
    api2, cache2, kube2 = cached([gpu_node("gpu-0")])
    cache2.children_watched = True
    api2.add({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "demo-router", "namespace": "team"}})
    cache2.note_foreign("ConfigMap", "team", "demo-router")
    out = reconcile(pxd(), kube2, SETTINGS, now="t0")
    assert find(out.status["conditions"], "Degraded")["reason"] == "ChildConflict"
    assert "ConfigMap" in api2.reads and not [w for w in api2.writes if w[0] != "status"]
    # Once it is deleted, the name is free again.
    cache2.discard("ConfigMap", "team", "demo-router")
    assert cache2.known_absent("ConfigMap", "team", "demo-router")


def test_a_removed_canary_is_looked_up_in_the_cache_only():
    api, cache, kube = cached()
    reconcile(pxd(), kube, SETTINGS, now="t0")
    api.reads.clear()
    kube.get_owned("apps/v1", "Deployment", "team", "demo-canary")
    assert api.reads == []
    # An unwatched kind is read through (the Secret the pass created is remembered for a while).
    assert kube.get_owned("v1", "Secret", "team", "demo-apikey") is not None and api.reads == []
    assert kube.get_owned("v1", "Secret", "team", "other") is None and api.reads == ["Secret"]


def test_an_older_event_never_replaces_a_newer_write():
    cache = ObjectCache()
    obj = {"kind": "Service", "metadata": {"name": "a", "namespace": "n", "resourceVersion": "7"}, "spec": {"x": 2}}
    cache.put(obj)
    cache.put({**obj, "metadata": {**obj["metadata"], "resourceVersion": "6"}, "spec": {"x": 1}})
    assert cache.get("Service", "n", "a")["spec"] == {"x": 2}
    cache.put({**obj, "metadata": {**obj["metadata"], "resourceVersion": "8"}, "spec": {"x": 3}})
    assert cache.get("Service", "n", "a")["spec"] == {"x": 3}
    cache.discard("Service", "n", "a")
    assert cache.get("Service", "n", "a") is None


def test_the_cache_hands_out_copies():
    cache = ObjectCache()
    cache.put({"kind": "Service", "metadata": {"name": "a", "namespace": "n"}, "spec": {"x": 1}})
    cache.get("Service", "n", "a")["spec"]["x"] = 99
    assert cache.get("Service", "n", "a")["spec"]["x"] == 1


def test_nodes_are_none_until_watched_then_the_gpu_check_reads_the_cache():
    api, cache, kube = cached()
    cache.nodes_watched = False
    assert kube.list_nodes() is None
    cache.nodes_watched = True
    cache.put_node(gpu_node("gpu-0", gpus=2))
    out = reconcile(pxd(spec={"engine": {"tensorParallelSize": 4}}), kube, SETTINGS, now="t0")
    assert "Node" not in api.reads
    assert find(out.status["conditions"], "Degraded")["reason"] == "InsufficientGPUsPerNode"
    assert gpu_view(gpu_node("x", gpus=2)) != gpu_view(gpu_node("x", gpus=4))


def test_a_status_patch_is_folded_into_the_cached_owner():
    api, cache, kube = cached()
    cache.put(pxd())
    kube.patch_status("team", "demo", {"replicas": 1, "queue": None})
    assert cache.get("PixtralDeployment", "team", "demo")["status"] == {"replicas": 1}


def test_controller_owner_names_the_pixtraldeployment():
    ref = {"kind": "PixtralDeployment", "name": "demo", "controller": True}
    assert controller_owner({"metadata": {"namespace": "team", "ownerReferences": [ref]}}) == ("team", "demo")
    assert controller_owner({"metadata": {"namespace": "team", "ownerReferences": [{**ref, "controller": False}]}}) is None
    assert controller_owner({"metadata": {"namespace": "team", "ownerReferences": [{**ref, "kind": "ReplicaSet"}]}}) is None


async def test_requeue_coalesces_a_burst_into_one_more_pass():
    runs = []
    release = asyncio.Event()

    async def run(key):
        runs.append(key)
        if len(runs) == 1:
            await release.wait()
        return True

    requeue = Requeue(run)
    first = asyncio.create_task(requeue.kick(("team", "demo")))
    await asyncio.sleep(0)
    for _ in range(5):  # five events while the first pass runs
        await requeue.kick(("team", "demo"))
    release.set()
    await first
    assert runs == [("team", "demo")] * 2


async def test_requeue_waits_on_the_loop_while_another_reconcile_holds_the_object():
    answers = [None, None, True]  # busy twice (the create handler runs), then the pass runs
    calls = []

    async def run(key):
        calls.append(key)
        return answers[len(calls) - 1]

    requeue = Requeue(run, busy_seconds=0.01)
    await asyncio.wait_for(requeue.kick(("team", "demo")), timeout=5)
    assert calls == [("team", "demo")] * 3


async def test_requeue_survives_a_failed_pass_and_stops_for_a_gone_object():
    calls = []

    async def run(key):
        calls.append(key)
        if key[1] == "broken":
            raise RuntimeError("API down")
        return False

    requeue = Requeue(run)
    await requeue.kick(("team", "broken"))
    await requeue.kick(("team", "gone"))
    await requeue.kick(("team", "broken"))
    assert calls == [("team", "broken"), ("team", "gone"), ("team", "broken")]


def handler(registry: kopf.OperatorRegistry, handler_id: str):
    found = [h for h in [*registry._indexing.get_all_handlers(), *registry._watching.get_all_handlers()] if h.id == handler_id]
    assert len(found) == 1, handler_id
    return found[0].fn


@pytest.fixture
def operator_handlers(monkeypatch):
    monkeypatch.setattr(kopf, "event", lambda *a, **k: None)  # no kopf event queue outside kopf.run
    api = CountingKube(nodes=None)
    cache = ObjectCache()
    kube = CachedKube(api, cache)
    registry = kopf.OperatorRegistry()
    register(registry, SETTINGS, kube, Scaler(kube, None), cache)
    return registry, api, cache


async def test_a_childs_event_reconciles_its_owner_and_a_hand_edit_is_reverted(operator_handlers):
    registry, api, cache = operator_handlers
    body = pxd()
    await handler(registry, "pixtraldeployment-cache")(body=body)
    reconcile(body, CachedKube(api, cache), SETTINGS, now="t0")
    live = cache.get("ConfigMap", "team", "demo-router")
    live["data"]["config.json"] = "{}"
    api.writes.clear()
    await handler(registry, "configmaps-cache")(body=live)
    await handler(registry, "configmaps-changed")(event={"type": "MODIFIED", "object": live})
    assert ("apply", "ConfigMap", "demo-router") in api.writes
    # The initial listing reconciles nothing (the resume handlers do); an object without an owner neither.
    api.writes.clear()
    await handler(registry, "configmaps-changed")(event={"type": None, "object": live})
    foreign = {"kind": "ConfigMap", "metadata": {"name": "x", "namespace": "team"}}
    await handler(registry, "configmaps-cache")(body=foreign)
    await handler(registry, "configmaps-changed")(event={"type": "MODIFIED", "object": foreign})
    assert api.writes == [] and cache.get("ConfigMap", "team", "x") is None
    assert not cache.known_absent("ConfigMap", "team", "x")  # a namesake: a child named x would be read first


async def test_a_deleted_child_is_recreated_and_a_deleted_owner_is_not_reconciled(operator_handlers):
    registry, api, cache = operator_handlers
    body = pxd()
    await handler(registry, "pixtraldeployment-cache")(body=body)
    reconcile(body, CachedKube(api, cache), SETTINGS, now="t0")
    service = cache.get("Service", "team", "demo-router")
    del api.objects[("v1", "Service", "team", "demo-router")]
    api.writes.clear()
    await handler(registry, "services-changed")(event={"type": "DELETED", "object": service})
    assert ("apply", "Service", "demo-router") in api.writes
    await handler(registry, "pixtraldeployment-gone")(event={"type": "DELETED", "object": body})
    api.writes.clear()
    await handler(registry, "services-changed")(event={"type": "MODIFIED", "object": service})
    assert api.writes == []


async def test_a_node_whose_gpus_change_reconciles_every_owner(operator_handlers):
    registry, api, cache = operator_handlers
    for name in ("a", "b"):
        await handler(registry, "pixtraldeployment-cache")(body=pxd(name=name))
    node = gpu_node("gpu-0", gpus=4)
    await handler(registry, "node-cache")(body=node)
    await handler(registry, "node-changed")(event={"type": None, "object": node})
    assert api.writes == []
    heartbeat = {**node, "status": {**node["status"], "conditions": [{"type": "Ready"}]}}
    await handler(registry, "node-changed")(event={"type": "MODIFIED", "object": heartbeat})
    assert api.writes == [], "a status rewrite that leaves the GPUs alone reconciles nothing"
    await handler(registry, "node-changed")(event={"type": "MODIFIED", "object": gpu_node("gpu-0", gpus=8)})
    assert {name for verb, kind, name in api.writes if verb == "status"} == {"a", "b"}


async def autoscaled_operator(load: float):
    """The registered handlers over a cache, one autoscaled PixtralDeployment created and its
    stable Deployment ready: (api, registry, prometheus, body, the autoscale timer's function)."""
    from test_scale_loop import SPEC, CannedPrometheus

    api = CountingKube(nodes=[gpu_node("gpu-0")])
    cache = ObjectCache()
    kube = CachedKube(api, cache)
    prom = CannedPrometheus()
    prom.load = load
    registry = kopf.OperatorRegistry()
    register(registry, SETTINGS, kube, Scaler(kube, prom, fleet_seconds=0.001), cache)
    body = pxd(spec=SPEC)
    await handler(registry, "pixtraldeployment-cache")(body=body)
    reconcile(body, kube, SETTINGS, now="t0")
    api.set_deployment_status("team", "demo-stable", replicas=1, readyReplicas=1, updatedReplicas=1)
    cache.put(api.get("apps/v1", "Deployment", "team", "demo-stable"))
    autoscale = next(h.fn for h in registry._spawning.get_all_handlers() if h.id == "autoscale")
    api.writes.clear()
    return api, registry, prom, body, autoscale


async def test_the_autoscaler_compares_with_the_status_it_wrote_not_kopfs_older_copy(monkeypatch):
    monkeypatch.setattr(kopf, "event", lambda *a, **k: None)
    api, registry, prom, body, autoscale = await autoscaled_operator(load=5)
    await autoscale(body=body)  # kopf's body: no status yet, and it stays so (no watch event here)
    await autoscale(body=body)
    assert [w for w in api.writes if w[0] == "status"] == [("status", "PixtralDeployment", "demo")]


async def test_the_autoscaler_reads_only_controlled_deployments_from_the_cache_and_never_scales_a_namesake():
    from test_scale_loop import SPEC, CannedPrometheus

    api, cache, kube = cached([gpu_node("gpu-0")])
    prom = CannedPrometheus()
    prom.load = 5  # would scale demo-stable up to 3
    scaler = Scaler(kube, prom, fleet_seconds=0.001)
    # Not created yet (its owner's create is still queued): nothing to scale, and no API read.
    body = pxd(spec=SPEC)
    result = await scaler.tick(body, now=prom.now)
    assert api.reads == [] and result.decisions == {}
    # A Deployment of the track's name that this PixtralDeployment does not control.
    api.add({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "demo-stable", "namespace": "team"},
             "spec": {"replicas": 1}})
    result = await scaler.tick(body, now=prom.now + 1)
    assert result.decisions == {} and not [w for w in api.writes if w[0] == "scale"]
    assert api.get("apps/v1", "Deployment", "team", "demo-stable")["spec"]["replicas"] == 1


async def test_the_watch_echo_of_the_autoscalers_status_write_does_not_make_the_next_tick_write_again(monkeypatch):
    """The API stores a merge patch without its nulls (`lastScaleTime` before any scale): the echo
    that replaces the cached body must compare equal, or every tick writes (seen at rest with 200
    objects: 25 status writes a second)."""
    monkeypatch.setattr(kopf, "event", lambda *a, **k: None)
    api, registry, prom, body, autoscale = await autoscaled_operator(load=0)
    for _ in range(3):
        await autoscale(body=body)
        stored = {**body, "status": api.statuses[("team", "demo")]}
        await handler(registry, "pixtraldeployment-cache")(body=stored)  # the watch event of the write
        prom.now += 2
    assert [w for w in api.writes if w[0] == "status"] == [("status", "PixtralDeployment", "demo")]
    assert "lastScaleTime" not in api.statuses[("team", "demo")]["autoscaler"]["stable"]


async def test_a_failed_autoscaler_tick_is_retried_at_the_interval_and_a_slow_one_is_logged(monkeypatch, caplog):
    import logging

    from pixtral_operator.handlers import pixtral as handlers_module

    api = CountingKube(nodes=[gpu_node("gpu-0")])
    cache = ObjectCache()
    kube = CachedKube(api, cache)
    registry = kopf.OperatorRegistry()
    scaler = Scaler(kube, None)
    register(registry, SETTINGS, kube, scaler, cache)
    timers = {h.id: h for h in registry._spawning.get_all_handlers() if h.id in ("autoscale", "canary")}
    # kopf's default backoff is 60 s: a minute without scaling after one failed read.
    assert timers["autoscale"].backoff == SETTINGS.autoscale_seconds
    assert timers["canary"].backoff == SETTINGS.canary_seconds

    clock = iter([100.0, 100.0 + handlers_module.SLOW_TICK_FACTOR * SETTINGS.autoscale_seconds + 0.5])
    monkeypatch.setattr(handlers_module, "_clock", lambda: next(clock))

    async def no_decision(body):
        from pixtral_operator.scale_loop import TickResult
        return TickResult({}, None)

    monkeypatch.setattr(scaler, "tick", no_decision)
    with caplog.at_level(logging.WARNING, logger=handlers_module.__name__):
        await timers["autoscale"].fn(body=pxd(spec={"autoscaling": {"enabled": True}}))
    assert "autoscaler tick took" in caplog.text and "team/demo" in caplog.text, caplog.text


async def test_the_echo_of_the_operators_own_apply_reconciles_nothing_and_a_later_version_does(
        operator_handlers, monkeypatch):
    from pixtral_operator.handlers import pixtral as handlers_module

    registry, api, cache = operator_handlers
    passes = []
    real_pass = handlers_module.run_reconcile
    monkeypatch.setattr(handlers_module, "run_reconcile", lambda body, *a, **k: passes.append(1) or real_pass(body, *a, **k))
    body = pxd()
    await handler(registry, "pixtraldeployment-cache")(body=body)
    reconcile(body, CachedKube(api, cache), SETTINGS, now="t0")
    written = cache.get("ConfigMap", "team", "demo-router")
    written["metadata"]["resourceVersion"] = "41"  # the fake API server assigns no versions
    cache.put(written)
    cache.note_own_write(written)  # what CachedKube does with an apply's answer
    api.writes.clear()
    await handler(registry, "configmaps-cache")(body=written)
    await handler(registry, "configmaps-changed")(event={"type": "MODIFIED", "object": written})
    assert passes == [], "the echo of the operator's own write ran a pass"
    # The same object at a later version (someone edited it) is reconciled and put back.
    edited = {**written, "data": {"config.json": "{}"}, "metadata": {**written["metadata"], "resourceVersion": "42"}}
    await handler(registry, "configmaps-cache")(body=edited)
    await handler(registry, "configmaps-changed")(event={"type": "MODIFIED", "object": edited})
    assert passes == [1] and ("apply", "ConfigMap", "demo-router") in api.writes


def test_an_own_write_is_recognised_once_and_only_at_its_version():
    cache = ObjectCache()
    obj = {"kind": "Service", "metadata": {"name": "a", "namespace": "n", "resourceVersion": "7"}}
    cache.note_own_write(obj)
    assert not cache.is_own_write("Service", "n", "a", "6")
    assert not cache.is_own_write("Service", "n", "a", None)
    assert cache.is_own_write("Service", "n", "a", "7")
    assert not cache.is_own_write("Service", "n", "a", "7")
    cache.note_own_write({"kind": "Service", "metadata": {"name": "b", "namespace": "n"}})  # no version: never
    assert not cache.is_own_write("Service", "n", "b", "")
