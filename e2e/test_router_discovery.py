"""The router's Kubernetes discovery against the local cluster's real API server.

`pixtral-runtime router --namespace --configmap` (KUBECONFIG set, as in a pod of the local
cluster) reads its ConfigMap, API-key Secret and the per-track EndpointSlices through watches
and applies every change live. The backends are two small HTTP servers on the node's address (the
cluster's bridge; the API server refuses loopback endpoint addresses) listed in hand-made
EndpointSlices of selector-less Services (the EndpointSlice controller leaves those alone).
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from localcluster import network

pytestmark = pytest.mark.timeout(300)

BIN = Path(sys.executable).with_name("pixtral-runtime")
CONFIGMAP = "demo-router"
BACKEND_HOST = network.BRIDGE_IP


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_backend(name: str) -> tuple[ThreadingHTTPServer, int]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            self.rfile.read(int(self.headers.get("content-length", 0)))
            body = json.dumps({"object": "chat.completion", "served_by": name}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer((BACKEND_HOST, 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


@pytest.fixture
def backends() -> Iterator[dict[str, int]]:
    servers = {name: start_backend(name) for name in ("a", "b")}
    yield {name: port for name, (_, port) in servers.items()}
    for server, _ in servers.values():
        server.shutdown()
        server.server_close()


def until(check: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except httpx.HTTPError as error:
            last = error
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def router_config(tracks: dict, weight: float = 0) -> dict:
    return {
        "deployment": "demo", "servedModelName": "tiny",
        "tracks": tracks, "canary": {"weight": weight},
        "tenancy": {"apiKeysSecret": "demo-api-keys",
                    "defaultLimits": {"requestsPerMinute": 0, "maxConcurrent": 0}},
        "pendingTimeoutSeconds": 60,
    }


def service(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"ports": [{"name": "http", "port": 8000, "protocol": "TCP"}]}}


def endpoint_slice(service_name: str, port: int, ready: bool = True) -> dict:
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": f"{service_name}-manual",
                     "labels": {"kubernetes.io/service-name": service_name,
                                "endpointslice.kubernetes.io/managed-by": "e2e.pixtral.dev"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [BACKEND_HOST], "conditions": {"ready": ready}}],
    }


def secret(key: str) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "demo-api-keys"},
            "data": {"team-a": base64.b64encode(key.encode()).decode()}}


def test_router_follows_configmap_secret_and_endpointslices(cluster, namespace, backends, tmp_path) -> None:
    rest = cluster.rest
    ns = f"/api/v1/namespaces/{namespace}"
    slices = f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"
    rest.create(f"{ns}/secrets", secret("sk-one"))
    rest.create(f"{ns}/services", service("demo-stable"))
    rest.create(slices, endpoint_slice("demo-stable", backends["a"]))
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": CONFIGMAP},
          "data": {"config.json": json.dumps(router_config({"stable": {"service": "demo-stable", "port": 8000}}))}}
    rest.create(f"{ns}/configmaps", cm)

    port = free_port()
    log = tmp_path / "router.log"
    with open(log, "wb") as f:
        router = subprocess.Popen(
            [str(BIN), "router", "--namespace", namespace, "--configmap", CONFIGMAP, "--host", "127.0.0.1",
             "--port", str(port), "--debug-headers"],
            env=cluster.env(), stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    url = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=url, timeout=30)

    def ask(key: str = "sk-one", headers: dict | None = None) -> httpx.Response:
        return client.post("/v1/chat/completions", json={"model": "tiny", "messages": []},
                           headers={"authorization": f"Bearer {key}", **(headers or {})})

    try:
        until(lambda: client.get("/readyz").status_code == 200, 60, "router /readyz")
        r = until(lambda: (resp := ask()).status_code == 200 and resp, 30, "a first answer")
        assert r.json()["served_by"] == "a" and r.headers["x-pixtral-backend"] == f"http://{BACKEND_HOST}:{backends['a']}"

        # EndpointSlice: the pod "moves" to another address -> traffic follows.
        rest.merge_patch(f"{slices}/demo-stable-manual", {"ports": [{"name": "http", "port": backends["b"]}]})
        until(lambda: ask().json().get("served_by") == "b", 30, "traffic to follow the EndpointSlice")

        # No ready endpoint: requests are held (pending gauge), then served when one turns ready.
        rest.merge_patch(f"{slices}/demo-stable-manual",
                         {"endpoints": [{"addresses": [BACKEND_HOST], "conditions": {"ready": False}}]})
        until(lambda: 'pixtral_router_ready_backends{track="stable"} 0.0' in client.get("/metrics").text, 30,
              "the router to see no ready backend")
        held: dict = {}
        waiter = threading.Thread(target=lambda: held.setdefault("r", ask()))
        waiter.start()
        until(lambda: 'pixtral_router_pending_requests{deployment="demo",track="stable"} 1.0' in client.get("/metrics").text, 30,
              "the request to be held")
        rest.merge_patch(f"{slices}/demo-stable-manual",
                         {"endpoints": [{"addresses": [BACKEND_HOST], "conditions": {"ready": True}}]})
        waiter.join(30)
        assert held["r"].status_code == 200 and held["r"].json()["served_by"] == "b"

        # Secret: the key rotates without a restart.
        rest.merge_patch(f"{ns}/secrets/demo-api-keys", {"data": secret("sk-two")["data"]})
        until(lambda: ask("sk-one").status_code == 401 and ask("sk-two").status_code == 200, 30,
              "the rotated key to apply")

        # ConfigMap: a canary track appears at weight 100 -> traffic moves to it.
        rest.create(f"{ns}/services", service("demo-canary"))
        rest.create(slices, endpoint_slice("demo-canary", backends["a"]))
        both = {"stable": {"service": "demo-stable", "port": 8000}, "canary": {"service": "demo-canary", "port": 8000}}
        rest.merge_patch(f"{ns}/configmaps/{CONFIGMAP}", {"data": {"config.json": json.dumps(router_config(both, 100))}})
        r = until(lambda: (resp := ask("sk-two")).headers.get("x-pixtral-track") == "canary" and resp, 30,
                  "traffic to move to the canary")
        assert r.json()["served_by"] == "a"

        # An invalid ConfigMap is refused; the last good configuration stays in force.
        bad = router_config(both, 100)
        bad["canary"]["weight"] = 500
        rest.merge_patch(f"{ns}/configmaps/{CONFIGMAP}", {"data": {"config.json": json.dumps(bad)}})
        until(lambda: "ignoring invalid router configuration" in log.read_text(), 30, "the refusal in the log")
        assert "config.json.canary.weight" in log.read_text()
        assert ask("sk-two").headers["x-pixtral-track"] == "canary"
        # Keys never reach the log.
        assert "sk-one" not in log.read_text() and "sk-two" not in log.read_text()
    finally:
        client.close()
        router.terminate()
        try:
            router.wait(30)
        except subprocess.TimeoutExpired:
            router.kill()
            router.wait(10)
