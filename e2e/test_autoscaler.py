"""The autoscaler on the local cluster, with the real runtime (tiny Pixtral on vLLM's CPU build), the
real router and a real Prometheus scraping them every second. The first two tests run the
kube-prometheus-stack path (the operator renders a PodMonitor, the Prometheus Operator's Prometheus
scrapes through it and the autoscaler queries that Prometheus); the canary test keeps the plain
pod-annotation path (the host Prometheus' `kubernetes_sd` role pod scrape):

- queue up and back: min 1, max 3, target 2, `--max-num-seqs 2`; twelve closed-loop clients of
  image requests through the router raise the engine queue, the Deployment is scaled up within a
  stated bound, and after the load stops it returns to 1 once the scale-down window has passed;
  status and Events show both decisions;
- scale from zero and back: min 0, no traffic -> no runtime pod and Ready=True/ScaledToZero; one
  request is held by the router (its pending gauge), the autoscaler starts a pod, the request
  completes with 200, and the track returns to zero after the window;
- a canary at zero woken by its share: stable serving, canary at 0; requests routed to the canary
  are served by stable meanwhile (the router's fallback gauge for the canary), the autoscaler
  starts a canary pod, and once it is ready the same requests land on the canary.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from autoscale_support import (
    ClosedLoopLoad,
    ReplicaRecorder,
    direction_changes,
    events_with_reason,
    prometheus_series,
    router_gauge,
    router_pending,
)
from localcluster import wait_for
from localcluster.monitoring import SCRAPE_INTERVAL
from pixtral_e2e import (  # noqa: F401  (fixtures)
    apply,
    chat,
    chat_body,
    condition,
    crds,
    get_pxd,
    operator,
    podmonitor_operator,
    pods,
    pxd_manifest,
    ready_pods,
    router_url,
    tiny_model,
    tiny_spec,
    wait_condition,
)
from pixtral_operator.drift import replicas_managers
from pixtral_operator.render.labels import AUTOSCALER_FIELD_MANAGER

pytestmark = [pytest.mark.cluster, pytest.mark.engine, pytest.mark.timeout(2400)]

STARTUP = 600  # seconds for a vLLM pod to become ready on a busy, shared 2-core machine
# Both Prometheuses scrape at this interval: the PodMonitors of `podmonitor_operator` ask for it,
# and it is the host Prometheus' annotation scrape interval (localcluster/monitoring.py takes it from there).
SCRAPE_INTERVAL_SECONDS = float(SCRAPE_INTERVAL.rstrip("s"))
AUTOSCALE_SECONDS = 2.0  # PIXTRAL_AUTOSCALE_SECONDS of the `operator` fixture
# Load start -> Deployment patched: the first requests reach the engine queue, Prometheus scrapes
# it (one interval), the next timer tick reads it (one interval) and patches. The margin covers
# request admission and image preprocessing, query latency and kopf's scheduling on a machine
# whose two cores are busy with vLLM engines in containers; it bounds the wait, not the speed
# (bench/bench_autoscaler.py measures the reaction).
REACTION_MARGIN_SECONDS = 60.0
REACTION_BOUND_SECONDS = SCRAPE_INTERVAL_SECONDS + AUTOSCALE_SECONDS + REACTION_MARGIN_SECONDS
SCALE_DOWN_WINDOW_SECONDS = 30
# Image requests of a fixed length (ignore_eos + min_tokens), so every one keeps its engine slot busy.
LOAD_BODY = chat_body(images=1, max_tokens=48, min_tokens=48, ignore_eos=True)
LOAD_CLIENTS = 12


def autoscaled_spec(model, *, replicas: int, min_replicas: int, max_replicas: int, window: int,
                    max_num_seqs: int, router: dict) -> dict:
    return tiny_spec(
        model,
        replicas=replicas,
        engine={"maxNumSeqs": max_num_seqs},
        autoscaling={"enabled": True, "minReplicas": min_replicas, "maxReplicas": max_replicas,
                     "targetQueuePerReplica": 2, "scaleDownWindowSeconds": window},
        router=router,
    )


def autoscaler_status(cluster, namespace: str, name: str, track: str = "stable") -> dict:
    return ((get_pxd(cluster, namespace, name) or {}).get("status") or {}).get("autoscaler", {}).get(track) or {}


def test_scales_up_with_the_queue_and_back_after_the_window(cluster, namespace, podmonitor_operator, tiny_model):
    name = "queue"
    spec = autoscaled_spec(tiny_model, replicas=1, min_replicas=1, max_replicas=3, max_num_seqs=2,
                           window=SCALE_DOWN_WINDOW_SECONDS, router={"requestTimeoutSeconds": 300})
    apply(cluster, namespace, pxd_manifest(name, spec))
    wait_condition(cluster, namespace, name, "Ready", "True", STARTUP, reason="Serving")
    url = router_url(cluster, namespace, name)
    warm = chat(url, LOAD_BODY, key=None)
    assert warm.status_code == 200, warm.text
    assert warm.json()["usage"]["completion_tokens"] == 48  # ignore_eos/min_tokens reach the engine
    # The queue signal comes through the rendered PodMonitor, and the pods carry no scrape annotations.
    assert cluster.rest.get(f"/apis/monitoring.coreos.com/v1/namespaces/{namespace}/podmonitors/{name}-runtime")
    runtime_jobs = cluster.wait_for_managed_scrape(lambda: {r["metric"]["job"] for r in prometheus_series(
        cluster.managed_prometheus_url, f'vllm:num_requests_waiting{{namespace="{namespace}",deployment="{name}"}}')}
        or None, namespace, "the runtime's queue gauge in the managed Prometheus")
    assert runtime_jobs == {f"{namespace}/{name}-runtime"}, runtime_jobs  # the PodMonitor names the job
    assert all("prometheus.io/scrape" not in (p["metadata"].get("annotations") or {})
               for p in pods(cluster, namespace, f"serving.pixtral.dev/deployment={name}"))
    # Idle: the autoscaler reads a complete signal and keeps the minimum.
    idle = wait_for(lambda: (s := autoscaler_status(cluster, namespace, name)).get("load") == 0 and s, 60,
                    "status.autoscaler.stable with load 0")
    assert idle["desired"] == 1 and idle["reason"] in ("AtMin", "Steady"), idle

    deployment = f"{name}-stable"
    recorder = ReplicaRecorder(cluster, namespace, deployment).start()
    load = ClosedLoopLoad(url, LOAD_BODY, clients=LOAD_CLIENTS, max_requests_per_client=20, deadline_seconds=240)
    try:
        started = load.start()
        try:
            up = wait_for(lambda: recorder.first(lambda c: c.replicas > 1, after=started), REACTION_BOUND_SECONDS,
                          f"the Deployment scaled above 1 replica within {REACTION_BOUND_SECONDS:g}s of load start")
            print(f"load start -> replicas {up.replicas} patched: {up.at - started:.2f}s "
                  f"(bound {REACTION_BOUND_SECONDS:g}s)")
            # The status shows the latest decision: ScaleUp for one tick, then AtMax while the load lasts.
            scaled_up = wait_for(lambda: (s := autoscaler_status(cluster, namespace, name)).get("desired", 0) > 1
                                 and s, 30, "status.autoscaler.stable.desired above 1")
            # One owner per field: the autoscaler's manager holds spec.replicas, the reconcile's applies
            # (every resync) leave it alone.
            live = cluster.rest.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/{deployment}")
            assert replicas_managers(live) == {AUTOSCALER_FIELD_MANAGER}, live["metadata"]["managedFields"]
            # Twelve requests outstanding against target 2 ask for 6 replicas, bounded by max 3 (the
            # first tick may see the queue still filling and take a smaller step first).
            wait_for(lambda: recorder.first(lambda c: c.replicas == 3, after=started), 30,
                     "the Deployment at maxReplicas 3")
        finally:
            stopped = load.stop(join_timeout=300)
        summary = load.summary()
        print(f"load: {summary}")
        assert summary["statuses"] == {"200": summary["requests"]}, summary
        assert 1 < scaled_up["desired"] <= 3 and scaled_up["load"] > 2, scaled_up
        assert scaled_up["lastScaleTime"] and scaled_up["reason"] in ("ScaleUp", "AtMax"), scaled_up

        down = wait_for(lambda: recorder.first(lambda c: c.replicas == 1, after=stopped),
                        SCALE_DOWN_WINDOW_SECONDS + 90, "the Deployment back at 1 replica after the window")
        after_stop = down.at - stopped
        print(f"load stop -> replicas 1: {after_stop:.1f}s (window {SCALE_DOWN_WINDOW_SECONDS}s)")
        steps = recorder.replica_steps(after=started)
        print(f"replica steps: {[(round(t - started, 1), a, b) for t, a, b in steps]}")
        # Which decision scaled down, and from what it remembered (printed before the assertions),
        # and which writer set the replicas last.
        print(f"autoscaler status at scale-down: {autoscaler_status(cluster, namespace, name)}")
        live = cluster.rest.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/{deployment}")
        print(f"spec.replicas owners at scale-down: {replicas_managers(live)}; managedFields: "
              f"{[(m.get('manager'), m.get('operation'), m.get('subresource'), m.get('time')) for m in live['metadata']['managedFields']]}")
        print("operator log, scaling lines:\n" + "\n".join(
            line for line in podmonitor_operator.log(tail=-1).splitlines()
            if (" -> " in line and "stable" in line) or "PATCH /apis/apps/v1" in line or "/scale" in line
            or "autoscaler tick took" in line or "Timer 'autoscale' failed" in line))
        # The last high recommendation was read at most one tick before the stop (twelve requests
        # were still in flight then), and scale-down waits a whole window after it.
        assert after_stop >= SCALE_DOWN_WINDOW_SECONDS - AUTOSCALE_SECONDS - SCRAPE_INTERVAL_SECONDS, after_stop
        assert [b for _, _, b in steps][-1] == 1 and direction_changes(steps) == 1, steps
    finally:
        recorder.stop()

    # The tick scales the Deployment, then patches the status: the recorder may see the first first.
    status = wait_for(lambda: (s := autoscaler_status(cluster, namespace, name)).get("desired") == 1 and s, 30,
                      "status.autoscaler.stable.desired back at 1")
    assert status["lastScaleTime"] >= scaled_up["lastScaleTime"], status
    ups = wait_for(lambda: events_with_reason(cluster, namespace, name, "ScaleUp"), 30, "a ScaleUp Event")
    downs = wait_for(lambda: events_with_reason(cluster, namespace, name, "ScaleDownAfterWindow"), 30,
                     "a ScaleDownAfterWindow Event")
    assert all(e["type"] == "Normal" and e["message"].startswith("stable: ") for e in ups + downs)
    assert "scaling 1 -> " in ups[0]["message"], ups
    assert downs[-1]["message"].endswith("-> 1"), downs
    assert f"scaleDownWindowSeconds {SCALE_DOWN_WINDOW_SECONDS}s" in downs[-1]["message"], downs
    selector = f"serving.pixtral.dev/deployment={name},serving.pixtral.dev/track=stable"
    wait_for(lambda: len(pods(cluster, namespace, selector)) == 1, 120, "the extra runtime pods to be gone")
    assert len(ready_pods(cluster, namespace, selector)) == 1


def test_scales_from_zero_for_a_held_request_and_back(cluster, namespace, podmonitor_operator, tiny_model):
    name = "zero"
    window = 20
    spec = autoscaled_spec(tiny_model, replicas=0, min_replicas=0, max_replicas=1, max_num_seqs=2, window=window,
                           # The router's request timeout covers the wait for a backend too.
                           router={"pendingTimeoutSeconds": STARTUP, "requestTimeoutSeconds": STARTUP + 120})
    apply(cluster, namespace, pxd_manifest(name, spec))
    wait_condition(cluster, namespace, name, "Ready", "True", STARTUP, reason="ScaledToZero")
    selector = f"serving.pixtral.dev/deployment={name},serving.pixtral.dev/track=stable"
    deployment_path = f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}-stable"
    assert cluster.rest.get(deployment_path)["spec"]["replicas"] == 0
    assert pods(cluster, namespace, selector) == []
    url = router_url(cluster, namespace, name)
    # The autoscaler reads the router's gauge (0) and keeps the track at zero.
    # Until Prometheus has scraped the new router (through the new PodMonitor), the wake signal is
    # not visible and the decision holds with another reason; wait for the reading that includes
    # the router's gauge.
    idle = cluster.wait_for_managed_scrape(lambda: (s := autoscaler_status(cluster, namespace, name)).get("load") == 0
                                           and s.get("reason") in ("AtMin", "Steady") and s, namespace,
                                           "status.autoscaler.stable with load 0 read from the router's gauge")
    assert idle["desired"] == 0, idle
    assert router_pending(url) == 0 and pods(cluster, namespace, selector) == []

    replies: list[httpx.Response | BaseException] = []

    def send() -> None:
        try:
            replies.append(chat(url, chat_body(images=1, max_tokens=8), key=None, timeout=STARTUP + 180))
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            replies.append(error)

    recorder = ReplicaRecorder(cluster, namespace, f"{name}-stable").start()
    client = threading.Thread(target=send, name="held-request", daemon=True)
    started = time.monotonic()
    client.start()
    try:
        wait_for(lambda: router_pending(url) == 1, 30, "the router to hold the request (pending gauge 1)")
        assert ready_pods(cluster, namespace, selector) == [] and not replies
        woken = wait_for(lambda: recorder.first(lambda c: c.replicas == 1, after=started), REACTION_BOUND_SECONDS,
                         f"the Deployment scaled 0 -> 1 within {REACTION_BOUND_SECONDS:g}s of the request")
        print(f"request -> replicas 1 patched: {woken.at - started:.2f}s (bound {REACTION_BOUND_SECONDS:g}s)")
        # ScaleFromZero for one tick, then Steady while the request waits for the pod.
        status = wait_for(lambda: (s := autoscaler_status(cluster, namespace, name)).get("desired") == 1
                          and s, 30, "status.autoscaler.stable.desired 1")
        assert status["load"] >= 1 and status["lastScaleTime"], status
        assert status["reason"] in ("ScaleFromZero", "Steady"), status
        client.join(STARTUP + 200)
        assert replies, "the held request did not finish"
        reply = replies[0]
        assert isinstance(reply, httpx.Response), reply
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["content"] is not None
        served = time.monotonic()
        # The router sees the pod in its EndpointSlice before the Deployment's status counts it ready.
        ready = wait_for(lambda: recorder.first(lambda c: c.ready >= 1, after=started), 30,
                         "the Deployment's status to count the ready pod")
        print(f"request -> pod ready: {ready.at - started:.1f}s; -> 200: {served - started:.1f}s")
        assert router_pending(url) == 0

        back = wait_for(lambda: recorder.first(lambda c: c.replicas == 0, after=served), window + 90,
                        "the Deployment back at 0 replicas after the window")
        print(f"200 -> replicas 0: {back.at - served:.1f}s (window {window}s)")
        assert back.at - served >= window - AUTOSCALE_SECONDS - SCRAPE_INTERVAL_SECONDS
    finally:
        recorder.stop()
        client.join(5)
    wakes = wait_for(lambda: events_with_reason(cluster, namespace, name, "ScaleFromZero"), 30,
                     "a ScaleFromZero Event")
    assert wakes[0]["message"].startswith("stable: load ") and wakes[0]["message"].endswith("starting 1"), wakes
    downs = wait_for(lambda: events_with_reason(cluster, namespace, name, "ScaleDownAfterWindow"), 30,
                     "a ScaleDownAfterWindow Event")
    assert downs[-1]["message"].endswith("scaling 1 -> 0"), downs
    wait_for(lambda: pods(cluster, namespace, selector) == [], 120, "the runtime pod to be gone")
    wait_condition(cluster, namespace, name, "Ready", "True", 60, reason="ScaledToZero")


def test_a_canary_at_zero_is_woken_by_its_share_served_on_stable(cluster, namespace, operator, tiny_model):
    name = "wake"
    # A long window: stable must keep serving (idle but up) for the whole test.
    spec = autoscaled_spec(tiny_model, replicas=1, min_replicas=0, max_replicas=1, max_num_seqs=2, window=1800,
                           # The open endpoint's callers are `anonymous`, marked to pin the canary.
                           router={"requestTimeoutSeconds": 300,
                                   "tenants": [{"name": "anonymous", "trackOverride": True}]})
    spec["canary"] = {"weight": 50, "replicas": 0}
    apply(cluster, namespace, pxd_manifest(name, spec))
    wait_condition(cluster, namespace, name, "Ready", "True", STARTUP)
    canary_selector = f"serving.pixtral.dev/deployment={name},serving.pixtral.dev/track=canary"
    canary_path = f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}-canary"
    assert cluster.rest.get(canary_path)["spec"]["replicas"] == 0
    url = router_url(cluster, namespace, name)
    # The canary's wake signal is visible at 0 (the router exports both tracks from the start).
    idle = wait_for(lambda: (s := autoscaler_status(cluster, namespace, name, "canary")).get("load") == 0
                    and s.get("reason") in ("AtMin", "Steady") and s, 60,
                    "status.autoscaler.canary with load 0 read from the router's gauges")
    assert idle["desired"] == 0, idle
    assert router_gauge(url, "pixtral_router_fallback_requests", "canary") == 0

    replies: list[httpx.Response | BaseException] = []
    stop = threading.Event()
    body = chat_body(max_tokens=256, min_tokens=256, ignore_eos=True)

    def canary_requests() -> None:
        for _ in range(400):  # bounded; stopped by the test once a reply comes from the canary
            if stop.is_set():
                return
            try:
                reply = chat(url, body, key=None, headers={"x-pixtral-track": "canary"}, timeout=300)
            except BaseException as error:  # noqa: BLE001 - reported by the assertions below
                replies.append(error)
                return
            replies.append(reply)
            if reply.headers.get("x-pixtral-track") == "canary":
                return

    recorder = ReplicaRecorder(cluster, namespace, f"{name}-canary").start()
    client = threading.Thread(target=canary_requests, name="canary-requests", daemon=True)
    started = time.monotonic()
    client.start()
    try:
        wait_for(lambda: router_gauge(url, "pixtral_router_fallback_requests", "canary") >= 1, 30,
                 "the router to count a canary request served by stable")
        woken = wait_for(lambda: recorder.first(lambda c: c.replicas == 1, after=started), REACTION_BOUND_SECONDS,
                         f"the canary Deployment scaled 0 -> 1 within {REACTION_BOUND_SECONDS:g}s")
        print(f"first canary request -> canary replicas 1 patched: {woken.at - started:.2f}s")
        client.join(STARTUP + 300)
        assert not client.is_alive(), "no request reached the canary after it was started"
    finally:
        stop.set()
        recorder.stop()
        client.join(5)
    errors = [r for r in replies if not isinstance(r, httpx.Response)]
    assert not errors, errors
    assert all(r.status_code == 200 for r in replies), [r.text for r in replies if r.status_code != 200]
    tracks = [r.headers["x-pixtral-track"] for r in replies]
    # Served by stable while the canary had no pod, then by the canary.
    assert tracks[0] == "stable" and tracks[-1] == "canary", tracks
    print(f"canary-pinned requests: {len(tracks)}, served by stable first: {tracks.count('stable')}")
    assert len(ready_pods(cluster, namespace, canary_selector)) == 1
    assert router_gauge(url, "pixtral_router_fallback_requests", "canary") == 0
    wakes = wait_for(lambda: events_with_reason(cluster, namespace, name, "ScaleFromZero"), 30,
                     "a ScaleFromZero Event")
    assert any(e["message"].startswith("canary: load ") for e in wakes), wakes
