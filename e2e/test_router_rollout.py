"""Rolling the router Deployment under steady streaming load loses no request (real vLLM, local cluster).

Two router replicas behind the router Service; four clients stream chat completions through the
Service's ClusterIP, one new connection per request (as a client behind a load balancer would);
`kubectl rollout restart` rolls the router pods (the operator's server-side apply leaves the
restart annotation alone, and the runtime pods are not touched). Every request started before, during and after the roll must complete
with a 200 and a whole stream: preStop keeps a terminating router serving while the endpoints
drop it, and its graceful shutdown lets the streams it holds finish.
"""

from __future__ import annotations

import json
import threading
import time
from urllib.parse import urlsplit

import httpx
import pytest
from localcluster import wait_for
from pixtral_e2e import (  # noqa: F401  (fixtures)
    API_KEY,
    apply,
    chat_body,
    crds,
    create_api_keys,
    operator,
    pods,
    pxd_manifest,
    ready_pods,
    tiny_model,
    tiny_spec,
    wait_condition,
)

pytestmark = [pytest.mark.cluster, pytest.mark.engine, pytest.mark.timeout(1200)]

NAME = "roll"
STARTUP = 420
CLIENTS = 4
ROUTER_SELECTOR = f"serving.pixtral.dev/deployment={NAME},app.kubernetes.io/component=router"


class StreamingLoad:
    """CLIENTS threads streaming requests back to back until stopped; every outcome is recorded."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ok = 0
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(CLIENTS)]

    def _one(self, client: httpx.Client) -> None:
        body = json.dumps(chat_body(max_tokens=8, stream=True))
        headers = {"authorization": f"Bearer {API_KEY}", "content-type": "application/json"}
        with client.stream("POST", f"{self.url}/v1/chat/completions", content=body, headers=headers) as r:
            events = [line for line in r.iter_lines() if line.startswith("data: ")]
            if r.status_code != 200:
                raise AssertionError(f"HTTP {r.status_code}: {' '.join(events)[:200]}")
            if not events or events[-1] != "data: [DONE]":
                raise AssertionError(f"stream cut after {len(events)} events")

    def _run(self) -> None:
        # No keep-alive: each request opens a connection, so the Service picks a router each time.
        limits = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(timeout=120, limits=limits) as client:
            for _ in range(100_000):  # bounded; stop() ends it long before
                if self.stop.is_set():
                    return
                try:
                    self._one(client)
                    with self.lock:
                        self.ok += 1
                except Exception as exc:  # recorded: the assertion shows every failure
                    with self.lock:
                        self.failures.append(f"{time.strftime('%H:%M:%S')} {exc.__class__.__name__}: {exc}"[:300])

    def __enter__(self) -> StreamingLoad:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(180)


def test_router_rollout_under_streaming_load_loses_nothing(cluster, namespace, operator, tiny_model, local_images):
    keys = create_api_keys(cluster, namespace)
    spec = tiny_spec(tiny_model, router={"apiKeysSecretRef": {"name": keys}, "replicas": 2,
                                         "requestTimeoutSeconds": 60})
    apply(cluster, namespace, pxd_manifest(NAME, spec))
    obj = wait_condition(cluster, namespace, NAME, "Ready", "True", STARTUP, reason="Serving")
    service = urlsplit(obj["status"]["endpoint"]).hostname.split(".")[0]
    cluster_ip = cluster.rest.get(f"/api/v1/namespaces/{namespace}/services/{service}")["spec"]["clusterIP"]
    url = f"http://{cluster_ip}:80"
    wait_for(lambda: len(ready_pods(cluster, namespace, ROUTER_SELECTOR)) == 2, 120, "two ready router pods")
    before = {p["metadata"]["name"] for p in pods(cluster, namespace, ROUTER_SELECTOR)}

    with StreamingLoad(url) as load:
        wait_for(lambda: load.ok >= 8 or load.failures, 300, "the load to get going")
        assert not load.failures, load.failures
        served_before_roll = load.ok
        deployment = next(p["metadata"]["ownerReferences"][0]["name"] for p in pods(cluster, namespace, ROUTER_SELECTOR))
        deployment = deployment.rsplit("-", 1)[0]  # the ReplicaSet's name less its template hash
        cluster.kubectl("rollout", "restart", f"deployment/{deployment}", "-n", namespace)

        def rolled() -> bool:
            current = pods(cluster, namespace, ROUTER_SELECTOR)
            names = {p["metadata"]["name"] for p in current}
            return (not names & before and len(ready_pods(cluster, namespace, ROUTER_SELECTOR)) == 2
                    and all(not p["metadata"].get("deletionTimestamp") for p in current))

        wait_for(rolled, 400, "the router pods to be replaced and the old ones gone")
        served_at_roll_end = load.ok
        wait_for(lambda: load.ok >= served_at_roll_end + 8, 300, "requests after the roll")
    assert load.failures == [], f"{len(load.failures)} lost of {load.ok + len(load.failures)}: {load.failures[:10]}"
    assert served_at_roll_end > served_before_roll, "no request completed during the roll"
