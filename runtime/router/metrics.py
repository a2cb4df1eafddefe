"""Prometheus metrics of one router app (its own registry, so apps in one process never collide).

The autoscaler reads `pixtral_router_pending_requests` (requests held because no backend is
ready: the scale-from-zero signal) and `pixtral_router_fallback_requests` (requests served by the
other track because theirs has no ready backend: what wakes a track at zero while the other one
serves), both by the track the request was routed to; the canary controller compares
`pixtral_router_requests_total` and `pixtral_router_request_duration_seconds` by track.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.utils import floatToGoString

from .config import TRACKS

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
# The `le` label values exactly as prometheus_client writes them ("1.0", "+Inf").
_BOUNDS = (*(floatToGoString(b) for b in LATENCY_BUCKETS), "+Inf")


class _Histogram:
    """One label set's histogram: per-bucket (not cumulative) counts plus the sum."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        # `le` buckets: a value equal to a bound belongs to that bound's bucket, as bisect_left gives.
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds

    def buckets(self) -> list[tuple[str, int]]:
        out, running = [], 0
        for bound, count in zip(_BOUNDS, self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


class _HotPath:
    """The per-request series, kept as plain integers and turned into metric families at scrape time.

    prometheus-client's Counter/Histogram/Gauge take a lock and walk their buckets on every call;
    the router runs on one event loop thread, so the request path only bumps dict entries here
    (about a tenth of the cost), and `collect()` builds the same series names, labels and buckets.
    """

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str], int] = {}
        self.duration: dict[str, _Histogram] = {}
        self.ttfb: dict[str, _Histogram] = {}
        self.in_flight: dict[tuple[str, str], int] = {}
        # tenant -> [images, pixels] admitted within the tenant's image budgets. Tenants are the
        # names of the key Secret (or `anonymous`): the label set is as bounded as that Secret.
        self.tenant_images: dict[str, list[int]] = {}
        # tenant -> [prompt, completion] tokens as the engine reported them (usage.py).
        self.tenant_tokens: dict[str, list[int]] = {}
        # (tenant, code) -> requests answered; authenticated tenants only (no `-` for refused keys).
        self.tenant_requests: dict[tuple[str, str], int] = {}

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "pixtral_router_requests", "Requests answered, by tenant, track and HTTP status code.",
            labels=["tenant", "track", "code"],
        )
        for labels, value in list(self.requests.items()):
            requests.add_metric(labels, value)
        yield requests
        for name, doc, series in (
            ("pixtral_router_request_duration_seconds", "Time from request to the end of the response, by track.",
             self.duration),
            ("pixtral_router_time_to_first_byte_seconds",
             "Time from request to the first response byte from the backend, by track.", self.ttfb),
        ):
            family = HistogramMetricFamily(name, doc, labels=["track"])
            for track, histogram in list(series.items()):
                family.add_metric([track], histogram.buckets(), histogram.total)
            yield family
        in_flight = GaugeMetricFamily(
            "pixtral_router_backend_in_flight", "Requests outstanding at each backend.", labels=["track", "backend"]
        )
        for labels, value in list(self.in_flight.items()):
            in_flight.add_metric(labels, value)
        yield in_flight
        images = CounterMetricFamily(
            "pixtral_router_tenant_images", "Images admitted and sent on, by tenant.", labels=["tenant"]
        )
        megapixels = CounterMetricFamily(
            "pixtral_router_tenant_megapixels",
            "Megapixels of the data URL images admitted and sent on, by tenant.", labels=["tenant"],
        )
        for tenant, (count, pixels) in list(self.tenant_images.items()):
            images.add_metric([tenant], count)
            megapixels.add_metric([tenant], pixels / 1e6)
        yield images
        yield megapixels
        tenant_requests = CounterMetricFamily(
            "pixtral_router_tenant_requests",
            "Requests answered, by tenant (from the API-key Secret) and HTTP status code.", labels=["tenant", "code"],
        )
        for labels, value in list(self.tenant_requests.items()):
            tenant_requests.add_metric(labels, value)
        yield tenant_requests
        prompt = CounterMetricFamily(
            "pixtral_router_tenant_prompt_tokens", "Prompt tokens the engine reported, by tenant.", labels=["tenant"]
        )
        completion = CounterMetricFamily(
            "pixtral_router_tenant_completion_tokens", "Completion tokens the engine reported, by tenant.",
            labels=["tenant"],
        )
        for tenant, (p, c) in list(self.tenant_tokens.items()):
            prompt.add_metric([tenant], p)
            completion.add_metric([tenant], c)
        yield prompt
        yield completion


class RouterMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, deployment: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.deployment = deployment
        r = self.registry
        self._hot = _HotPath()
        r.register(self._hot)
        self.pending = Gauge(
            "pixtral_router_pending_requests",
            "Requests held because no backend of any track is ready, by the track they were routed to "
            "(the scale-from-zero signal).",
            ["deployment", "track"], registry=r,
        )
        self.fallback = Gauge(
            "pixtral_router_fallback_requests",
            "Requests in flight on the other track because the track they were routed to has no ready "
            "backend (the wake-up signal for a track at zero while the other serves).",
            ["deployment", "track"], registry=r,
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
        self.router_replicas = Gauge(
            "pixtral_router_limit_replicas",
            "Ready router replicas this one shares each tenant's limits with (itself included).", registry=r,
        )
        self.router_replicas.set(1)
        self.queued = Gauge(
            "pixtral_router_queued_requests",
            "Requests waiting their tenant's turn because every backend of the track is at its concurrency "
            "target (fair queuing), by track.", ["track"], registry=r,
        )
        self.config_loaded = Gauge(
            "pixtral_router_config_loaded", "1 once a valid configuration is loaded.", registry=r
        )
        # Both tracks exported from the start: a reading of 0 is what tells the autoscaler that a track
        # scaled to zero can still be woken (an absent series would hold it at 1).
        self.pending_by_track = {track: self.pending.labels(deployment, track) for track in TRACKS}
        self.fallback_by_track = {track: self.fallback.labels(deployment, track) for track in TRACKS}
        for gauge in (*self.pending_by_track.values(), *self.fallback_by_track.values()):
            gauge.set(0)
        # labels() takes a lock and builds a tuple; the paths below reuse the children they made before.
        self._children: dict[tuple, object] = {}

    def _child(self, metric, *labels):
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    # ---- the request path: plain dict updates (see _HotPath) ----
    def observe_request(self, tenant: str, track: str, code: int, seconds: float | None) -> None:
        requests = self._hot.requests
        key = (tenant, track, str(code))
        requests[key] = requests.get(key, 0) + 1
        if tenant != "-":  # `-`: refused before a tenant was known (a bad or missing key)
            by_tenant = self._hot.tenant_requests
            tkey = (tenant, key[2])
            by_tenant[tkey] = by_tenant.get(tkey, 0) + 1
        if seconds is not None and track != "-":
            histogram = self._hot.duration.get(track)
            if histogram is None:
                histogram = self._hot.duration[track] = _Histogram()
            histogram.observe(seconds)

    def tenant_images(self, tenant: str, images: int, pixels: int) -> None:
        totals = self._hot.tenant_images.get(tenant)
        if totals is None:
            totals = self._hot.tenant_images[tenant] = [0, 0]
        totals[0] += images
        totals[1] += pixels

    def tenant_tokens(self, tenant: str, prompt: int, completion: int) -> None:
        totals = self._hot.tenant_tokens.get(tenant)
        if totals is None:
            totals = self._hot.tenant_tokens[tenant] = [0, 0]
        totals[0] += prompt
        totals[1] += completion

    def observe_ttfb(self, track: str, seconds: float) -> None:
        histogram = self._hot.ttfb.get(track)
        if histogram is None:
            histogram = self._hot.ttfb[track] = _Histogram()
        histogram.observe(seconds)

    def backend_started(self, track: str, backend: str) -> None:
        in_flight = self._hot.in_flight
        key = (track, backend)
        in_flight[key] = in_flight.get(key, 0) + 1

    def backend_finished(self, track: str, backend: str) -> None:
        self._hot.in_flight[(track, backend)] -= 1

    def forget_backends(self, current: set[str]) -> None:
        """Drop the idle in-flight series of backends that are gone (pods come and go)."""
        in_flight = self._hot.in_flight
        for key in [k for k, v in in_flight.items() if not v and k[1] not in current]:
            del in_flight[key]

    def watch_queue(self, track: str, length) -> None:
        """Export a track's fair-queue length, read at scrape time (nothing on the request path)."""
        self.queued.labels(track).set_function(length)

    def reject(self, reason: str) -> None:
        self._child(self.rejections, reason).inc()

    def retried(self, track: str) -> None:
        self._child(self.retries, track).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
