"""Load and observation for the autoscaler's e2e test and benchmark on the local cluster.

- :class:`ClosedLoopLoad`: N client threads, each sending one chat request through the router after
  the other, so exactly N requests are outstanding while it runs. A closed loop keeps the queue at
  a known height whatever the engine's speed; every client stops by itself after a request count
  and a deadline.
- :class:`ReplicaRecorder`: a thread that polls a Deployment and records each change of
  ``spec.replicas`` and ``status.readyReplicas`` with its time, to time the autoscaler's reactions
  and count its direction changes.
- small readers for the PixtralDeployment's Events and the router's pending gauge.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from localcluster import Cluster

ROUTER_PENDING_METRIC = "pixtral_router_pending_requests"


@dataclass(frozen=True)
class Reply:
    started: float  # time.monotonic()
    seconds: float
    status: int  # 0: no HTTP answer (transport error)
    detail: str = ""


class ClosedLoopLoad:
    """`clients` threads sending `body` to the router one request after the other.

    Bounded: each client sends at most `max_requests_per_client` requests and starts none after
    `deadline_seconds`; :meth:`stop` stops new requests and waits for those in flight.
    """

    def __init__(self, url: str, body: Mapping[str, Any], clients: int, max_requests_per_client: int,
                 deadline_seconds: float, api_key: str | None = None, request_timeout: float = 300) -> None:
        if clients < 1 or max_requests_per_client < 1 or deadline_seconds <= 0:
            raise ValueError("clients, max_requests_per_client and deadline_seconds must be positive")
        self.url = f"{url}/v1/chat/completions"
        self.content = json.dumps(dict(body)).encode()
        self.headers = {"content-type": "application/json"}
        if api_key:
            self.headers["authorization"] = f"Bearer {api_key}"
        self.clients = clients
        self.max_requests_per_client = max_requests_per_client
        self.deadline_seconds = deadline_seconds
        self.request_timeout = request_timeout
        self.replies: list[Reply] = []
        self.started_at: float | None = None
        self.stopped_at: float | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self) -> float:
        """Starts every client at once; returns the start time (time.monotonic())."""
        self.started_at = time.monotonic()
        deadline = self.started_at + self.deadline_seconds
        for index in range(self.clients):
            thread = threading.Thread(target=self._client, args=(deadline,), name=f"load-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self.started_at

    def _client(self, deadline: float) -> None:
        with httpx.Client(timeout=self.request_timeout) as client:
            for _ in range(self.max_requests_per_client):
                if self._stop.is_set() or time.monotonic() >= deadline:
                    return
                began = time.monotonic()
                try:
                    response = client.post(self.url, content=self.content, headers=self.headers)
                    reply = Reply(began, time.monotonic() - began, response.status_code,
                                  "" if response.status_code == 200 else response.text[:300])
                except httpx.HTTPError as error:
                    reply = Reply(began, time.monotonic() - began, 0, f"{type(error).__name__}: {error}")
                with self._lock:
                    self.replies.append(reply)

    def stop(self, join_timeout: float) -> float:
        """No new requests; waits (bounded) for those in flight. Returns the stop time."""
        self.stopped_at = time.monotonic()
        self._stop.set()
        end = self.stopped_at + join_timeout
        for thread in self._threads:
            thread.join(max(0.0, end - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            raise AssertionError(f"load clients still running {join_timeout:g}s after stop: {alive}")
        return self.stopped_at

    @property
    def last_reply_at(self) -> float | None:
        with self._lock:
            return max((r.started + r.seconds for r in self.replies), default=None)

    def summary(self) -> dict[str, Any]:
        with self._lock:
            replies = list(self.replies)
        statuses: dict[str, int] = {}
        for reply in replies:
            statuses[str(reply.status)] = statuses.get(str(reply.status), 0) + 1
        latencies = sorted(r.seconds for r in replies if r.status == 200)
        return {
            "clients": self.clients,
            "requests": len(replies),
            "statuses": statuses,
            "errors": [r.detail for r in replies if r.status != 200][:5],
            "p50_seconds": round(latencies[len(latencies) // 2], 3) if latencies else None,
            "max_seconds": round(latencies[-1], 3) if latencies else None,
        }


@dataclass
class ReplicaChange:
    at: float  # time.monotonic()
    replicas: int
    ready: int


@dataclass
class ReplicaRecorder:
    """Polls a Deployment every `interval` seconds (in its own thread, with its own API client) and
    records each change of (spec.replicas, status.readyReplicas). Stops by itself after `limit_seconds`."""

    cluster: Cluster
    namespace: str
    deployment: str
    interval: float = 0.2
    limit_seconds: float = 1800
    changes: list[ReplicaChange] = field(default_factory=list)
    errors: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"replicas-{self.deployment}", daemon=True)

    @property
    def path(self) -> str:
        return f"/apis/apps/v1/namespaces/{self.namespace}/deployments/{self.deployment}"

    def start(self) -> ReplicaRecorder:
        self._thread.start()
        return self

    def _run(self) -> None:
        client = self.cluster.info.client()
        end = time.monotonic() + self.limit_seconds
        last: tuple[int, int] | None = None
        try:
            while not self._stop.is_set() and time.monotonic() < end:
                try:
                    dep = client.get_or_none(self.path)
                except Exception:  # noqa: BLE001 - a missed poll is retried; counted for the report
                    self.errors += 1
                    dep = None
                if dep is not None:
                    now = (int((dep.get("spec") or {}).get("replicas") or 0),
                           int((dep.get("status") or {}).get("readyReplicas") or 0))
                    if now != last:
                        with self._lock:
                            self.changes.append(ReplicaChange(time.monotonic(), *now))
                        last = now
                self._stop.wait(self.interval)
        finally:
            client.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def snapshot(self) -> list[ReplicaChange]:
        with self._lock:
            return list(self.changes)

    def first(self, predicate, after: float = 0.0) -> ReplicaChange | None:
        """The first recorded change at or after `after` whose state satisfies predicate(change)."""
        return next((c for c in self.snapshot() if c.at >= after and predicate(c)), None)

    def replica_steps(self, after: float = 0.0, before: float = float("inf")) -> list[tuple[float, int, int]]:
        """(time, old, new) for each change of spec.replicas within [after, before)."""
        steps, previous = [], None
        for change in self.snapshot():
            if previous is not None and change.replicas != previous and after <= change.at < before:
                steps.append((change.at, previous, change.replicas))
            previous = change.replicas
        return steps


def direction_changes(steps: list[tuple[float, int, int]]) -> int:
    """How often consecutive replica steps reverse direction (up then down, or down then up)."""
    directions = [1 if new > old else -1 for _, old, new in steps]
    return sum(1 for a, b in zip(directions, directions[1:], strict=False) if a != b)


def pxd_events(cluster: Cluster, namespace: str, name: str) -> list[dict[str, Any]]:
    """The Events about one PixtralDeployment, oldest first."""
    items = cluster.rest.get(
        f"/api/v1/namespaces/{namespace}/events",
        fieldSelector=f"involvedObject.kind=PixtralDeployment,involvedObject.name={name}",
    )["items"]
    return sorted(items, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")


def events_with_reason(cluster: Cluster, namespace: str, name: str, reason: str) -> list[dict[str, Any]]:
    return [e for e in pxd_events(cluster, namespace, name) if e.get("reason") == reason]


def router_metrics_url(router: str) -> str:
    """A router pod's /metrics: on its metrics port, not the tenant port of `router`."""
    from pixtral_operator.render.labels import ROUTER_METRICS_PORT

    return f"{router.rsplit(':', 1)[0]}:{ROUTER_METRICS_PORT}/metrics"


def router_gauge(router: str, metric: str, track: str | None = None, timeout: float = 5) -> float:
    """A router gauge read from its /metrics: the sum of its series, or of one track's."""
    text = httpx.get(router_metrics_url(router), timeout=timeout).text
    labels = rf'\{{[^}}]*track="{re.escape(track)}"[^}}]*\}}' if track else r"(?:\{[^}]*\})?"
    values = re.findall(rf"^{re.escape(metric)}{labels}\s+(\S+)", text, re.MULTILINE)
    if not values:
        raise AssertionError(f"{router_metrics_url(router)} has no {metric} sample" + (f" for track {track}" if track else ""))
    return sum(float(v) for v in values)


def router_pending(router: str, timeout: float = 5) -> float:
    """The router's pending-requests gauge, summed over its series."""
    return router_gauge(router, ROUTER_PENDING_METRIC, timeout=timeout)


def prometheus_series(prometheus_url: str, promql: str, timeout: float = 5) -> list[dict]:
    """An instant query's result: one {"metric": labels, "value": [time, text]} per series."""
    response = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": promql}, timeout=timeout)
    response.raise_for_status()
    return response.json()["data"]["result"]


def prometheus_value(prometheus_url: str, promql: str, timeout: float = 5) -> float | None:
    """An instant query's single value (None when the answer is empty)."""
    result = prometheus_series(prometheus_url, promql, timeout)
    return float(result[0]["value"][1]) if result else None
