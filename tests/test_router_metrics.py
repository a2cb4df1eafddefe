"""The router's request-path metrics: plain counters turned into standard Prometheus series at scrape time."""

from __future__ import annotations

import pytest
from pixtral_runtime.router.metrics import LATENCY_BUCKETS, RouterMetrics
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families


def samples(metrics: RouterMetrics) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_requests_counter_by_tenant_track_and_code() -> None:
    m = RouterMetrics("d")
    m.observe_request("team-a", "stable", 200, 0.01)
    m.observe_request("team-a", "stable", 200, 0.02)
    m.observe_request("team-b", "-", 401, None)
    got = samples(m)
    assert got[("pixtral_router_requests_total", (("code", "200"), ("tenant", "team-a"), ("track", "stable")))] == 2
    assert got[("pixtral_router_requests_total", (("code", "401"), ("tenant", "team-b"), ("track", "-")))] == 1
    # Refusals before a track was chosen have no duration sample.
    assert ("pixtral_router_request_duration_seconds_count", (("track", "-"),)) not in got


@pytest.mark.parametrize("values", [[0.0005, 0.001, 0.003, 0.003, 7.0, 900.0], [0.25], []])
def test_histograms_match_prometheus_clients_own(values: list[float]) -> None:
    """Same buckets, counts and sum as a prometheus_client Histogram fed the same values."""
    m = RouterMetrics("d")
    reference = Histogram("ref", "ref", buckets=LATENCY_BUCKETS, registry=CollectorRegistry())
    for v in values:
        m.observe_ttfb("canary", v)
        reference.observe(v)
    got = samples(m)
    ref = {
        (s.name.replace("ref", "pixtral_router_time_to_first_byte_seconds"), tuple(sorted(s.labels.items()))): s.value
        for family in reference.collect() for s in family.samples if not s.name.endswith("_created")
    }
    if not values:
        assert not any(name.startswith("pixtral_router_time_to_first_byte") for name, _ in got)
        return
    for (name, labels), value in ref.items():
        assert got[(name, tuple(sorted((*labels, ("track", "canary")))))] == pytest.approx(value)


def test_in_flight_gauge_goes_up_and_back_to_zero() -> None:
    m = RouterMetrics("d")
    m.backend_started("stable", "http://10.0.0.1:8000")
    m.backend_started("stable", "http://10.0.0.1:8000")
    key = ("pixtral_router_backend_in_flight", (("backend", "http://10.0.0.1:8000"), ("track", "stable")))
    assert samples(m)[key] == 2
    m.backend_finished("stable", "http://10.0.0.1:8000")
    m.backend_finished("stable", "http://10.0.0.1:8000")
    assert samples(m)[key] == 0


def test_slow_path_series_are_exported_too() -> None:
    m = RouterMetrics("d")
    m.reject("too_many_images")
    m.retried("stable")
    got = samples(m)
    assert got[("pixtral_router_admission_rejections_total", (("reason", "too_many_images"),))] == 1
    assert got[("pixtral_router_upstream_retries_total", (("track", "stable"),))] == 1
    for track in ("stable", "canary"):  # present at 0 from the start: the autoscaler's wake signals
        assert got[("pixtral_router_pending_requests", (("deployment", "d"), ("track", track)))] == 0
        assert got[("pixtral_router_fallback_requests", (("deployment", "d"), ("track", track)))] == 0
    assert b"# TYPE pixtral_router_request_duration_seconds histogram" in generate_latest(m.registry)
