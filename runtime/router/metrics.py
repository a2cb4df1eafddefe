"""Prometheus metrics of one router app (its own registry, so apps in one process never collide).

The autoscaler reads `pixtral_router_pending_requests` (requests held because no backend is
ready: the scale-from-zero signal); the canary controller compares
`pixtral_router_requests_total` and `pixtral_router_request_duration_seconds` by track.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class RouterMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, deployment: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.deployment = deployment
        r = self.registry
        self.requests = Counter(
            "pixtral_router_requests", "Requests answered, by tenant, track and HTTP status code.",
            ["tenant", "track", "code"], registry=r,
        )
        self.duration = Histogram(
            "pixtral_router_request_duration_seconds", "Time from request to the end of the response, by track.",
            ["track"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.ttfb = Histogram(
            "pixtral_router_time_to_first_byte_seconds",
            "Time from request to the first response byte from the backend, by track.",
            ["track"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.in_flight = Gauge(
            "pixtral_router_backend_in_flight", "Requests outstanding at each backend.", ["track", "backend"], registry=r
        )
        self.pending = Gauge(
            "pixtral_router_pending_requests",
            "Requests held because no backend of any track is ready (the scale-from-zero signal).",
            ["deployment"], registry=r,
        )
        self.rejections = Counter(
            "pixtral_router_admission_rejections", "Requests refused by admission, by reason.", ["reason"], registry=r
        )
        self.retries = Counter(
            "pixtral_router_upstream_retries", "Requests retried on another backend after a connect failure.",
            ["track"], registry=r,
        )
        self.ready_backends = Gauge(
            "pixtral_router_ready_backends", "Ready backends known to the router, by track.", ["track"], registry=r
        )
        self.config_loaded = Gauge(
            "pixtral_router_config_loaded", "1 once a valid configuration is loaded.", registry=r
        )
        self.pending_gauge = self.pending.labels(deployment)
        self.pending_gauge.set(0)
        # labels() takes a lock and builds a tuple; the hot path reuses the children it made before.
        self._children: dict[tuple, object] = {}

    def _child(self, metric, *labels):
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe_request(self, tenant: str, track: str, code: int, seconds: float | None) -> None:
        self._child(self.requests, tenant, track, str(code)).inc()
        if seconds is not None and track != "-":
            self._child(self.duration, track).observe(seconds)

    def observe_ttfb(self, track: str, seconds: float) -> None:
        self._child(self.ttfb, track).observe(seconds)

    def backend_gauge(self, track: str, backend: str):
        return self._child(self.in_flight, track, backend)

    def reject(self, reason: str) -> None:
        self._child(self.rejections, reason).inc()

    def retried(self, track: str) -> None:
        self._child(self.retries, track).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
