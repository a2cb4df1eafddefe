"""Autoscaler benchmark on the local cluster: reaction time and stability under a steady load.

    .venv/bin/python bench/bench_autoscaler.py [--clients 4] [--observe 90] [--window 30] [--keep-cluster]

Brings the local cluster up if it is not running (and stops it again at the end if it started it
and no test session uses it), starts `pixtral-operator` for one fresh namespace the way the e2e
tests do (PIXTRAL_AUTOSCALE_SECONDS=2, Prometheus scraping every second), and creates a
PixtralDeployment running the tiny Pixtral on vLLM's CPU build with `--max-num-seqs 2` and
autoscaling min 1, max 3, targetQueuePerReplica 2.

Then `--clients` closed-loop clients send image requests (48 tokens each, ignore_eos) through the
router: with 4 clients the queue is 3-4 requests most of the time, which asks for exactly 2
replicas, with short dips that ask for 1 while a request is between client and engine. Measured:

- reaction: load start -> queue above target visible in Prometheus -> Deployment patched to 2 ->
  the new pod ready;
- stability: while the load stays steady for `--observe` seconds after the new pod is ready, the
  number of scale events and of direction changes (target: one scale event, no direction change),
  and how many autoscaler readings recommended fewer replicas (the dips the window absorbs);
- scale-down: load stop -> back at 1 replica (`--window` seconds of scale-down window).

Results: bench/results/autoscaler.json and the "Autoscaler" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "e2e"))

import localcluster  # noqa: E402
from autoscale_support import (  # noqa: E402
    ClosedLoopLoad,
    ReplicaRecorder,
    direction_changes,
    prometheus_value,
    pxd_events,
)
from localcluster import ApiError, Cluster, wait_for  # noqa: E402
from pixtral_e2e import (  # noqa: E402
    RESTRICTED_NAMESPACE_LABELS,
    InClusterOperator,
    apply,
    chat,
    chat_body,
    create_model_claim,
    delete_model_volumes,
    get_pxd,
    install_crds,
    make_tiny_model,
    pxd_manifest,
    router_url,
    tiny_spec,
    wait_condition,
)

RESULTS = ROOT / "bench" / "results" / "autoscaler.json"
DOCS = ROOT / "docs" / "benchmarks.md"
SECTION_START, SECTION_END = "<!-- bench_autoscaler:start -->", "<!-- bench_autoscaler:end -->"
NAME = "bench"
STARTUP = 600  # seconds for a vLLM pod to become ready on a busy 2-core machine
TARGET_QUEUE = 2
TOKENS = 48
AUTOSCALE_SECONDS = 2  # the operator's default (operator/settings.py), which the chart keeps
SCRAPE_INTERVAL = "1s"  # the local cluster's Prometheus


def log(message: str) -> None:
    print(f"[bench_autoscaler {time.strftime('%H:%M:%S')}] {message}", flush=True)



def create_namespace(cluster: Cluster) -> str:
    name = f"bench-autoscaler-{uuid.uuid4().hex[:6]}"
    cluster.rest.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": name, "labels": RESTRICTED_NAMESPACE_LABELS}})
    wait_for(lambda: cluster.rest.get_or_none(f"/api/v1/namespaces/{name}/serviceaccounts/default"), 60,
             f"the default ServiceAccount of namespace {name}")
    return name


def delete_namespace(cluster: Cluster, name: str) -> None:
    # The operator has stopped by now: a finalizer it did not release would keep the namespace forever.
    if cluster.rest.get_or_none(pxd_path(name)) is not None:
        log(f"warning: PixtralDeployment {name}/{NAME} still exists after the operator stopped; removing its finalizers")
        cluster.rest.merge_patch(pxd_path(name), {"metadata": {"finalizers": None}})
    try:
        cluster.rest.delete(f"/api/v1/namespaces/{name}")
    except ApiError as error:
        if error.status != 404:
            raise
    wait_for(lambda: cluster.rest.get_or_none(f"/api/v1/namespaces/{name}") is None, 180,
             f"namespace {name} to be deleted (its pods stopped)")


def pxd_path(namespace: str) -> str:
    return f"/apis/serving.pixtral.dev/v1alpha1/namespaces/{namespace}/pixtraldeployments/{NAME}"


def delete_pxd(cluster: Cluster, namespace: str) -> None:
    """Deletes the PixtralDeployment while the operator runs, so kopf stops its timers and releases
    its finalizer."""
    try:
        cluster.rest.delete(pxd_path(namespace))
    except ApiError as error:
        if error.status != 404:
            raise
    try:
        wait_for(lambda: cluster.rest.get_or_none(pxd_path(namespace)) is None, 60,
                 f"PixtralDeployment {namespace}/{NAME} to be deleted")
    except localcluster.WaitTimeout as error:
        log(f"warning: {error}")


def leave_cluster(cluster: Cluster, paths: localcluster.ClusterPaths, marker: Path, stop: bool) -> None:
    cluster.close()
    localcluster.leave_session(paths, marker, keep=True)
    if stop and not localcluster.other_sessions_alive(paths):
        localcluster.down(paths, say=lambda line: log(f"cluster: {line}"))


def stable_status(cluster: Cluster, namespace: str) -> dict:
    return ((get_pxd(cluster, namespace, NAME) or {}).get("status") or {}).get("autoscaler", {}).get("stable") or {}


def measure(cluster: Cluster, namespace: str, model: str, args: argparse.Namespace) -> dict:
    base = tiny_spec(model)
    spec = tiny_spec(
        model,
        replicas=1,
        # vLLM's automatic binding pins every engine's compute thread to the same core on this
        # 2-core machine, where a busy engine then starves a starting one for minutes; unpinned,
        # the new pod starts beside the loaded one.
        engine={"maxNumSeqs": 2, "env": base["engine"]["env"] + [{"name": "VLLM_CPU_OMP_THREADS_BIND",
                                                                   "value": "nobind"}]},
        autoscaling={"enabled": True, "minReplicas": 1, "maxReplicas": 3, "targetQueuePerReplica": TARGET_QUEUE,
                     "scaleDownWindowSeconds": args.window},
        router={"requestTimeoutSeconds": 300},
    )
    apply(cluster, namespace, pxd_manifest(NAME, spec))
    log("waiting for the first runtime pod")
    created = time.monotonic()
    wait_condition(cluster, namespace, NAME, "Ready", "True", STARTUP, reason="Serving")
    first_ready = time.monotonic() - created
    url = router_url(cluster, namespace, NAME)
    body = chat_body(images=1, max_tokens=TOKENS, min_tokens=TOKENS, ignore_eos=True)
    warm = chat(url, body, key=None, timeout=300)
    if warm.status_code != 200:
        raise RuntimeError(f"warm-up request failed: {warm.status_code} {warm.text[:300]}")
    wait_for(lambda: stable_status(cluster, namespace).get("load") == 0, 60, "the autoscaler to read load 0")

    engine = f'namespace="{namespace}",deployment="{NAME}",track="stable"'
    queue_query = f"sum(vllm:num_requests_waiting{{{engine}}}) + sum(vllm:num_requests_running{{{engine}}})"
    recorder = ReplicaRecorder(cluster, namespace, f"{NAME}-stable").start()
    load = ClosedLoopLoad(url, body, clients=args.clients, max_requests_per_client=100_000,
                          deadline_seconds=2 * STARTUP + args.observe)
    readings: list[dict] = []
    try:
        log(f"load: {args.clients} closed-loop clients")
        started = load.start()
        visible = wait_for(lambda: (v := prometheus_value(cluster.prometheus_url, queue_query)) is not None
                           and v > TARGET_QUEUE and time.monotonic(), 60, "the queue above target in Prometheus",
                           interval=0.1)
        patched = wait_for(lambda: recorder.first(lambda c: c.replicas >= 2, after=started), 120,
                           "the Deployment patched to 2 replicas")
        log(f"replicas patched after {patched.at - started:.2f}s; waiting for the new pod")
        ready = wait_for(lambda: recorder.first(lambda c: c.ready >= 2, after=started), STARTUP,
                         "the new runtime pod ready")
        log(f"new pod ready after {ready.at - started:.1f}s; observing the steady load for {args.observe}s")
        observe_end = ready.at + args.observe
        while time.monotonic() < observe_end:
            status = stable_status(cluster, namespace)
            readings.append({"load": status.get("load"), "recommendation": status.get("recommendation"),
                             "desired": status.get("desired"), "reason": status.get("reason")})
            time.sleep(AUTOSCALE_SECONDS)
        stopped = load.stop(join_timeout=300)
        load_steps = recorder.replica_steps(after=started, before=stopped)
        log(f"load stopped; waiting for the scale-down ({args.window}s window)")
        down = wait_for(lambda: recorder.first(lambda c: c.replicas == 1, after=stopped), args.window + 120,
                        "the Deployment back at 1 replica")
    finally:
        recorder.stop()
        if load.stopped_at is None:
            load.stop(join_timeout=300)

    events = pxd_events(cluster, namespace, NAME)
    scale_events = [{"reason": e["reason"], "message": e["message"], "count": e.get("count", 1)}
                    for e in events if e["reason"] in ("ScaleUp", "ScaleDownAfterWindow", "ScaleFromZero")]
    loads = [r["load"] for r in readings if r["load"] is not None]
    steady_steps = [s for s in load_steps if s[0] >= ready.at]
    return {
        "first_pod_ready_seconds": round(first_ready, 1),
        "reaction": {
            "queue_visible_in_prometheus_seconds": round(visible - started, 2),
            "replicas_patched_seconds": round(patched.at - started, 2),
            "new_pod_ready_seconds": round(ready.at - started, 1),
            "patched_to": patched.replicas,
        },
        "steady": {
            "clients": args.clients,
            "observed_seconds": args.observe,
            "scale_events_during_load": len(load_steps),
            "direction_changes_during_load": direction_changes(load_steps),
            "scale_events_after_new_pod_ready": len(steady_steps),
            "replica_steps": [[round(t - started, 1), a, b] for t, a, b in load_steps],
            "readings": len(readings),
            "load_min": min(loads) if loads else None,
            "load_max": max(loads) if loads else None,
            "load_mean": round(statistics.fmean(loads), 2) if loads else None,
            "readings_recommending_fewer": sum(1 for r in readings if r["recommendation"] is not None
                                               and r["desired"] is not None and r["recommendation"] < r["desired"]),
        },
        "scale_down": {
            "window_seconds": args.window,
            "load_stop_to_one_replica_seconds": round(down.at - stopped, 1),
        },
        "load": load.summary(),
        "events": scale_events,
    }


def write_docs(results: dict) -> None:
    r, s, d = results["reaction"], results["steady"], results["scale_down"]
    target_ok = s["direction_changes_during_load"] == 0
    text = f"""{SECTION_START}
## Autoscaler

`{results['command']}` ({results['when']}, {results['machine']}, load average before
{results['loadavg_before']}). Local cluster (real kube-apiserver, Prometheus scraping every
{SCRAPE_INTERVAL}), `pixtral-operator` with `PIXTRAL_AUTOSCALE_SECONDS={AUTOSCALE_SECONDS}`, one
PixtralDeployment: tiny Pixtral on vLLM's CPU build, `maxNumSeqs` 2, autoscaling min 1, max 3,
targetQueuePerReplica {TARGET_QUEUE}, scaleDownWindowSeconds {d['window_seconds']}. Load:
{s['clients']} closed-loop clients of one-image requests ({TOKENS} tokens, ignore_eos) through
the router.

| measure | value |
|---|---|
| PixtralDeployment created -> first runtime pod ready | {results['first_pod_ready_seconds']:.1f} s |
| load start -> queue above target visible in Prometheus | {r['queue_visible_in_prometheus_seconds']:.2f} s |
| load start -> Deployment patched (1 -> {r['patched_to']}) | {r['replicas_patched_seconds']:.2f} s |
| load start -> new runtime pod ready (vLLM start under load) | {r['new_pod_ready_seconds']:.1f} s |
| scale events during the load ({s['observed_seconds']} s steady after the new pod) | {s['scale_events_during_load']} (steps {s['replica_steps']}) |
| direction changes during the load (target 0) | {s['direction_changes_during_load']} ({'met' if target_ok else 'missed'}) |
| autoscaler status readings during the steady phase (every {AUTOSCALE_SECONDS} s) | {s['readings']}: load {s['load_min']}-{s['load_max']} (mean {s['load_mean']}), {s['readings_recommending_fewer']} recommending fewer replicas than running |
| load stop -> back at 1 replica | {d['load_stop_to_one_replica_seconds']:.1f} s |
| requests | {results['load']['requests']}, statuses {results['load']['statuses']} |

The reaction to the Deployment patch is bounded by one scrape interval plus one timer interval
plus query and API latency; the time to a ready pod is dominated by the vLLM start, here slowed
by the loaded engine and by other work on the shared machine. The runtime pods run with
`VLLM_CPU_OMP_THREADS_BIND=nobind`: vLLM's automatic binding pins every engine's compute thread to
the same core of a 2-core machine, and the loaded engine then starved the starting one (in a run
without it the new pod was not ready after 600 s). Raw numbers: `bench/results/autoscaler.json`.
{SECTION_END}
"""
    current = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    if SECTION_START in current and SECTION_END in current:
        head, rest = current.split(SECTION_START, 1)
        current = head + text.rstrip("\n") + rest.split(SECTION_END, 1)[1]
    else:
        current = current.rstrip("\n") + "\n\n" + text
    DOCS.write_text(current)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="autoscaler benchmark (see module docstring)")
    parser.add_argument("--clients", type=int, default=4, help="closed-loop clients (4 asks for 2 replicas)")
    parser.add_argument("--observe", type=int, default=90, help="seconds of steady load after the new pod is ready")
    parser.add_argument("--window", type=int, default=30, help="scaleDownWindowSeconds")
    parser.add_argument("--keep-cluster", action="store_true", help="leave a cluster this run started running")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.observe < 1 or args.window < 0:
        parser.error("--clients and --observe must be >= 1 and --window >= 0")

    loadavg_before = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    paths = localcluster.ClusterPaths.default()
    started_cluster = localcluster.running_info(paths) is None
    info = localcluster.up(paths, owner="bench", say=lambda line: log(f"cluster: {line}"))
    marker = localcluster.join_session(paths)
    cluster = Cluster(info)
    # Cleanup runs last-registered first and every step runs even if an earlier one failed:
    # the PixtralDeployment is deleted while the operator still runs (it releases its finalizer),
    # then the operator stops, then the namespace goes, then the cluster (if this run started it).
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(leave_cluster, cluster, paths, marker, started_cluster and not args.keep_cluster)
        install_crds(cluster)
        images = cluster.project_images(say=lambda line: log(line))
        model_dir = make_tiny_model(info.paths.volumes / "tiny-pixtral")
        namespace = create_namespace(cluster)
        cleanup.callback(delete_namespace, cluster, namespace)
        cleanup.callback(delete_model_volumes, cluster, namespace)
        model = create_model_claim(cluster, namespace, model_dir)
        # The operator in the cluster, from the local image, under the chart's ServiceAccount.
        operator = InClusterOperator(cluster, namespace, images)
        cleanup.callback(operator.stop)
        operator.start()
        cleanup.callback(delete_pxd, cluster, namespace)
        results = measure(cluster, namespace, model, args)

    flags = " ".join(argv if argv is not None else sys.argv[1:])
    results = {
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "loadavg_before": loadavg_before,
        "command": f".venv/bin/python bench/bench_autoscaler.py {flags}".strip(),
        **results,
        "targets": {"no_direction_change_at_steady_load": results["steady"]["direction_changes_during_load"] == 0},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    log(json.dumps(results, indent=2))
    if not args.no_docs:
        write_docs(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
