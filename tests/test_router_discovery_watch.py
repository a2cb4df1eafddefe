"""Discovery's watches against a loopback API server that goes silent (a half-open connection):
the client-side read timeout ends the dead watch and the thread re-lists, with jittered backoff."""

from __future__ import annotations

import json
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from pixtral_runtime.router import discovery

pytestmark = pytest.mark.timeout(60)


class SilentWatchApi:
    """Lists answer at once (a ConfigMap whose data counts the lists); watches get their headers
    and then nothing at all, as through a connection whose other end is gone."""

    def __init__(self) -> None:
        self.lists = 0
        self.watches = 0
        self.release = threading.Event()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                if "watch=true" in self.path:
                    api.watches += 1
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                    self.send_header("transfer-encoding", "chunked")
                    self.end_headers()
                    self.wfile.flush()
                    api.release.wait(30)  # bounded: the test ends first
                    return
                api.lists += 1
                body = json.dumps({"kind": "ConfigMapList", "apiVersion": "v1",
                                   "metadata": {"resourceVersion": str(api.lists)},
                                   "items": [{"metadata": {"name": "demo-router", "namespace": "team"},
                                              "data": {"version": str(api.lists)}}]}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> SilentWatchApi:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def test_a_silent_watch_is_abandoned_and_the_thread_relists() -> None:
    from kubernetes import client

    snapshots: list[str] = []
    with SilentWatchApi() as api:
        configuration = client.Configuration()
        configuration.host = api.url
        api_client = client.ApiClient(configuration)
        core = client.CoreV1Api(api_client)
        thread = discovery._WatchThread(
            "configmap/demo-router", core.list_namespaced_config_map,
            {"namespace": "team", "field_selector": "metadata.name=demo-router"},
            lambda objects: snapshots.append(objects["demo-router"]["data"]["version"]),
            api_client.sanitize_for_serialization,
            watch_timeout=1, watch_read_slack=0.5, rng=random.Random(1),
        )
        thread.start()
        try:
            deadline = time.monotonic() + 30
            while len(snapshots) < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            thread.stop()
        # Each silent watch was given up on and followed by a fresh list: state keeps moving.
        assert snapshots[:3] == ["1", "2", "3"], snapshots
        assert api.watches >= 2


def test_backoff_doubles_to_its_cap_with_jitter() -> None:
    rng = random.Random(7)
    for failures in range(1, 12):
        ceiling = min(discovery.MAX_BACKOFF_SECONDS, 0.5 * 2 ** min(failures, 8))
        draws = [discovery.backoff_seconds(failures, rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in draws)
        assert max(draws) - min(draws) > ceiling / 10  # spread: replicas do not re-list in step
    assert discovery.backoff_seconds(100, rng) <= discovery.MAX_BACKOFF_SECONDS
