"""Automated canary analysis on the local cluster, with the real vLLM engine (tiny Pixtral, CPU build),
the real router and Prometheus scraping both every second, under steady load from a client pod.

One PixtralDeployment and one stable track serve three canaries in turn (each a change of the
canary's settings, which starts a new analysis), so the file starts a stable pod once:

1. a slow canary: once its pod is ready (the analysis paused by annotation meanwhile), its CPU limit
   is cut in place to a fraction of a core, which the kubelet enforces; resumed, it is rolled back
   on the latency ratio;
2. an erroring canary: once it serves, its engine core process is stopped (SIGSTOP, a hung
   engine), so the router answers the requests sent to it with 504 after its request timeout;
   it is rolled back on the error rate;
3. a good canary (the same model, another maxNumSeqs): promoted through every step, the stable
   track rolls to its settings while the canary keeps its share, then the canary goes, and the
   client sees no answer other than 2xx during the whole analysis and promotion.

Each rollback's Event names the measured number and the threshold.
"""

from __future__ import annotations

import json
import time

import pytest
from autoscale_support import events_with_reason
from localcluster import wait_for
from pixtral_e2e import (  # noqa: F401  (fixtures)
    apply,
    chat_body,
    crds,
    get_pxd,
    local_images,
    operator,
    pods,
    pxd_manifest,
    ready_pods,
    tiny_model,
    tiny_spec,
    wait_condition,
)

pytestmark = [pytest.mark.cluster, pytest.mark.engine, pytest.mark.timeout(1800)]

NAME = "cny"
STARTUP = 600
# Short steps so that the file stays within its budget; minRequests fits the load below.
ANALYSIS = {"steps": [25, 50], "intervalSeconds": 15, "minRequests": 5, "maxErrorRate": 0.05,
            "maxLatencyRatio": 2.5, "latencyMetric": "requestLatency", "maxFailedChecks": 1}
# Slow, yet within the router's request timeout: at 200m the canary's p95 passed 15 s, so its
# timeouts (504) failed the error-rate check before the latency check ran. At 500m one run saw
# p95 4.6 s against stable's 0.85 s (5.4x, the threshold 2.5x).
SLOW_CPU_LIMIT = "500m"
SLOW_CPU_REQUEST = "250m"
REQUEST_TIMEOUT_SECONDS = 15  # the router's: a hung canary's requests end as 504 after this
# A hung canary holds each client it serves for REQUEST_TIMEOUT_SECONDS, so with a quarter of the
# requests it completes about one request per client per 15 s window: 10 clients give the
# analysis its minRequests (5) where 4 did not.
LOAD_CLIENTS = 10
CANARY_SELECTOR = f"serving.pixtral.dev/deployment={NAME},serving.pixtral.dev/track=canary"
# kopf posts an Event a moment after the status patch of the same tick (an_event).
EVENT_WAIT_SECONDS = 30

# Closed-loop clients; one line per answer: "R <unix time> <status> <track that served it>".
LOAD_SCRIPT = """
import os, sys, threading, time, httpx
url, body, end = os.environ["URL"], os.environ["BODY"], time.time() + float(os.environ["DURATION"])
lock = threading.Lock()
def client():
    with httpx.Client(timeout=60) as http:
        while time.time() < end:
            try:
                r = http.post(url, content=body, headers={"content-type": "application/json"})
                status, track = r.status_code, r.headers.get("x-pixtral-track", "-")
            except httpx.HTTPError as error:
                status, track = 0, type(error).__name__
            with lock:
                print(f"R {time.time():.3f} {status} {track}", flush=True)
threads = [threading.Thread(target=client) for _ in range(int(os.environ["CLIENTS"]))]
[t.start() for t in threads]
[t.join() for t in threads]
print("DONE", flush=True)
"""

# Stops vLLM's engine core (its process title is VLLM::EngineCore): the API server stays up and
# healthy, and every request waits for an engine that never answers.
STOP_ENGINE_SCRIPT = """
import os, signal
found = []
for pid in os.listdir("/proc"):
    if pid.isdigit() and int(pid) != os.getpid():  # this script's own argv holds the name too
        try:
            title = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\\0", b" ").decode()
        except OSError:
            continue
        if "EngineCore" in title:
            os.kill(int(pid), signal.SIGSTOP)
            found.append(pid)
print("STOPPED", " ".join(found))
"""


def canary_status(cluster, namespace):
    return ((get_pxd(cluster, namespace, NAME) or {}).get("status") or {}).get("canary") or {}


def an_event(cluster, namespace: str, reason: str) -> list:
    """The Events of `reason` about the PixtralDeployment, once there is one. kopf posts Events from
    a queue of its own, so one can arrive after the status patch of the same tick."""
    return wait_for(lambda: events_with_reason(cluster, namespace, NAME, reason), EVENT_WAIT_SECONDS,
                    f"a {reason} Event")


def wait_phase(cluster, namespace, phases, timeout, what):
    return wait_for(lambda: (s := canary_status(cluster, namespace)).get("phase") in phases and s, timeout,
                    f"status.canary.phase in {phases} ({what}); last {canary_status(cluster, namespace)}")


def canary_spec(max_num_seqs: int) -> dict:
    return {"engine": {"maxNumSeqs": max_num_seqs}, "analysis": ANALYSIS}


def set_canary(cluster, namespace, spec):
    patch = json.dumps({"spec": {"canary": spec}})
    cluster.kubectl("patch", "pixtraldeployment", NAME, "-n", namespace, "--type=merge", "-p", patch)


def answers(cluster, namespace, after: float, before: float = float("inf")) -> list[tuple[float, int, str]]:
    log = cluster.kubectl("logs", "-n", namespace, "load", check=False).stdout
    out = []
    for line in log.splitlines():
        if line.startswith("R "):
            _, at, status, track = line.split()
            if after <= float(at) < before:
                out.append((float(at), int(status), track))
    return out


def start_load(cluster, namespace, image, url, duration):
    body = json.dumps(chat_body(images=1, max_tokens=8))
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "load"}, "spec": {
        "restartPolicy": "Never", "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": "main", "image": image, "command": ["python3", "-u", "-c", LOAD_SCRIPT],
            "env": [{"name": k, "value": v} for k, v in
                    {"URL": url.rstrip("/") + "/chat/completions", "BODY": body, "DURATION": str(duration),
                     "CLIENTS": str(LOAD_CLIENTS)}.items()],
            "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                "readOnlyRootFilesystem": True},
        }]}}
    cluster.rest.create(f"/api/v1/namespaces/{namespace}/pods", pod)
    wait_for(lambda: (cluster.rest.get(f"/api/v1/namespaces/{namespace}/pods/load").get("status") or {})
             .get("phase") == "Running", 120, "the load pod running")


def annotate(cluster, namespace, action):
    cluster.kubectl("annotate", "pixtraldeployment", NAME, "-n", namespace, f"serving.pixtral.dev/canary={action}",
                    "--overwrite")


def cpu_limit_applied(cluster, namespace, pod):
    """The CPU limit the kubelet reports as applied to the pod's container."""
    status = cluster.rest.get(f"/api/v1/namespaces/{namespace}/pods/{pod}").get("status") or {}
    container = (status.get("containerStatuses") or [{}])[0]
    return ((container.get("resources") or {}).get("limits") or {}).get("cpu")


def rollback_event(cluster, namespace, after_count):
    events = wait_for(lambda: (e := events_with_reason(cluster, namespace, NAME, "CanaryRolledBack"))
                      and len(e) > after_count and e, 30, "a CanaryRolledBack Event")
    return events[-1]["message"]


def test_slow_and_erroring_canaries_roll_back_and_a_good_one_is_promoted(cluster, namespace, operator, tiny_model,
                                                                          local_images):
    started = time.monotonic()
    # The tenant limits far above what ten closed-loop clients can send: the test asks for nothing
    # but 2xx during the promotion, and once answers come fast the default 600 per minute (or its
    # share while two router pods are ready) answered one run's clients with 178 429s in a burst.
    spec = tiny_spec(tiny_model, router={"requestTimeoutSeconds": REQUEST_TIMEOUT_SECONDS,
                                         "defaultLimits": {"requestsPerMinute": 100000, "maxConcurrent": 1000}})
    apply(cluster, namespace, pxd_manifest(NAME, spec))
    wait_condition(cluster, namespace, NAME, "Ready", "True", STARTUP, reason="Serving")
    endpoint = get_pxd(cluster, namespace, NAME)["status"]["endpoint"]
    start_load(cluster, namespace, local_images["router"], endpoint, duration=1500)
    wait_for(lambda: len(answers(cluster, namespace, 0)) >= 4, 120, "the load answered")
    print(f"stable serving under load after {time.monotonic() - started:.0f}s")

    # 1. Slow. A CPU-limited vLLM takes many minutes to start, so the canary starts with a limit
    # of the whole machine (a LimitRange default: the stable pod, admitted before it, has none),
    # the analysis is paused by annotation meanwhile, and once the pod is ready its limit is cut
    # in place (the kubelet enforces it through the cgroup, no restart); then the analysis resumes.
    limits = {"apiVersion": "v1", "kind": "LimitRange", "metadata": {"name": "canary-cpu"},
              "spec": {"limits": [{"type": "Container", "default": {"cpu": "2"}}]}}
    cluster.rest.create(f"/api/v1/namespaces/{namespace}/limitranges", limits)
    annotate(cluster, namespace, "pause")
    set_canary(cluster, namespace, canary_spec(max_num_seqs=6))
    wait_for(lambda: pods(cluster, namespace, CANARY_SELECTOR), 60, "the slow canary's pod")
    cluster.rest.delete(f"/api/v1/namespaces/{namespace}/limitranges/canary-cpu")
    slow = wait_for(lambda: ready_pods(cluster, namespace, CANARY_SELECTOR), STARTUP, "the canary pod ready")[0]
    assert canary_status(cluster, namespace)["phase"] == "Pending"  # paused: weight 0 although ready
    assert canary_status(cluster, namespace)["weight"] == 0
    # The request goes down with the limit (a request may not exceed its limit).
    resize = {"spec": {"containers": [{"name": "runtime", "resources": {
        "requests": {"cpu": SLOW_CPU_REQUEST}, "limits": {"cpu": SLOW_CPU_LIMIT}}}]}}
    cluster.kubectl("patch", "pod", slow["metadata"]["name"], "-n", namespace, "--subresource", "resize",
                    "--type=strategic", "-p", json.dumps(resize))
    wait_for(lambda: cpu_limit_applied(cluster, namespace, slow["metadata"]["name"]) == SLOW_CPU_LIMIT, 60,
             f"the canary's CPU limit {SLOW_CPU_LIMIT} applied in place")
    annotate(cluster, namespace, "resume")
    wait_phase(cluster, namespace, ("Progressing",), 30, "the slow canary analysed")
    an_event(cluster, namespace, "CanaryPaused")
    an_event(cluster, namespace, "CanaryResumed")
    rolled = wait_phase(cluster, namespace, ("RolledBack",), 180, "the slow canary rolled back")
    assert rolled["weight"] == 0 and rolled["reason"] == "CheckFailed", rolled
    message = rollback_event(cluster, namespace, 0)
    print(f"slow canary: {message}")
    assert "latency" in message and "above the threshold 2.5x" in message, message
    assert rolled["lastCheck"]["canary"]["latencySeconds"] > 2.5 * rolled["lastCheck"]["stable"]["latencySeconds"]
    wait_for(lambda: not pods(cluster, namespace, CANARY_SELECTOR), 120, "the slow canary scaled to 0")
    print(f"slow canary rolled back after {time.monotonic() - started:.0f}s")

    # 2. Erroring: a hung engine core; the router's upstream timeouts are 5xx.
    set_canary(cluster, namespace, canary_spec(max_num_seqs=5))
    wait_phase(cluster, namespace, ("Pending",), 30, "a new analysis for the changed canary")
    wait_phase(cluster, namespace, ("Progressing",), STARTUP, "the erroring canary ready")
    pod = ready_pods(cluster, namespace, CANARY_SELECTOR)[0]["metadata"]["name"]
    stopped = cluster.kubectl("exec", "-n", namespace, pod, "--", "python3", "-c", STOP_ENGINE_SCRIPT).stdout
    assert stopped.split()[1:], f"no engine core process found in {pod}: {stopped}"
    rolled = wait_phase(cluster, namespace, ("RolledBack",), 180, "the erroring canary rolled back")
    message = rollback_event(cluster, namespace, 1)
    print(f"erroring canary: {message}")
    assert "error rate" in message and "above the threshold 5.00%" in message, message
    assert rolled["lastCheck"]["canary"]["errorRate"] > 0.05, rolled["lastCheck"]
    wait_for(lambda: not pods(cluster, namespace, CANARY_SELECTOR), 120, "the erroring canary scaled to 0")
    print(f"erroring canary rolled back after {time.monotonic() - started:.0f}s")

    # 3. Good: every step, then promotion through a rolling update of stable, with only 2xx answers.
    good_from = time.time()
    set_canary(cluster, namespace, canary_spec(max_num_seqs=4))
    wait_phase(cluster, namespace, ("Progressing",), STARTUP, "the good canary ready")
    weights = set()
    wait_for(lambda: weights.add(canary_status(cluster, namespace).get("weight"))
             or canary_status(cluster, namespace).get("phase") in ("Promoting", "Promoted", "RolledBack"),
             240, "the good canary through its steps")
    assert canary_status(cluster, namespace)["phase"] != "RolledBack", canary_status(cluster, namespace)
    assert {25, 50} <= weights, weights
    wait_phase(cluster, namespace, ("Promoted",), STARTUP, "the new stable rolled out")
    wait_for(lambda: canary_status(cluster, namespace).get("retired") and not pods(cluster, namespace, CANARY_SELECTOR),
             120, "the promoted canary's pods gone")
    stable = cluster.rest.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/{NAME}-stable")
    env = {e["name"]: e.get("value") for e in stable["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["PIXTRAL_MAX_NUM_SEQS"] == "4", env  # stable runs the canary's settings
    time.sleep(3)  # answers in flight at the end
    seen = answers(cluster, namespace, good_from)
    bad = [a for a in seen if not 200 <= a[1] < 300]
    served = {track for _, _, track in seen}
    print(f"good canary promoted after {time.monotonic() - started:.0f}s: {len(seen)} answers, "
          f"{len(bad)} non-2xx, tracks {sorted(served)}")
    assert bad == [], bad[:10]
    assert "canary" in served and len(seen) >= 20, (len(seen), served)
    for reason in ("CanaryStepAdvanced", "CanaryPromoting", "CanaryPromoted"):
        an_event(cluster, namespace, reason)
    cols = cluster.kubectl("get", "pxd", NAME, "-n", namespace).stdout
    assert "Promoted" in cols.splitlines()[1], cols
    print(cols)
