"""The autoscaler's Prometheus signal: query rendering, response parsing, transport failures
(against a canned-response HTTP server on 127.0.0.1), the assessment of staleness, and the default
queries evaluated by a real Prometheus scraping local exporters."""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
import yaml
from pixtral_operator.prometheus import (
    FleetReader,
    FleetResults,
    PrometheusClient,
    QueryConfigError,
    QueryResult,
    Sample,
    TrackReadings,
    assess,
    default_queries,
    escape_label_value,
    fleet_queries,
    parse_query_response,
    read_fleet_signal,
    read_signal,
    read_track,
    render_override,
    split_fleet,
    track_queries,
)
from pixtral_operator.scale_decision import Signal

# --- query rendering ------------------------------------------------------------------------


def test_default_queries_select_the_track_and_keep_parts_separate():
    queries = default_queries("team-a", "demo", "stable")
    engine = '{namespace="team-a",deployment="demo",track="stable"}'
    assert queries.engine_load == (
        f"sum(vllm:num_requests_waiting{engine}) + sum(vllm:num_requests_running{engine})"
    )
    assert queries.engine_pods == f"count(count by (pod) (vllm:num_requests_running{engine}))"
    assert queries.engine_oldest_sample == f"min(timestamp(vllm:num_requests_running{engine}))"
    # Held and fallback requests routed to the track; an unlabelled series (older routers) counts for stable.
    assert queries.router_pending == (
        'sum({namespace="team-a",deployment="demo",'
        '__name__=~"pixtral_router_pending_requests|pixtral_router_fallback_requests",track=~"stable|"})'
    )
    assert "or vector(0)" not in queries.engine_load  # absence must stay visible
    assert not queries.override


def test_canary_router_query_counts_only_series_labelled_canary():
    queries = default_queries("team-a", "demo", "canary")
    assert 'track="canary"' in queries.engine_load
    assert queries.router_pending.endswith('track=~"canary"})')


def test_label_values_are_escaped():
    assert escape_label_value('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    queries = default_queries('we"ird\\ns', "demo", "stable")
    assert 'namespace="we\\"ird\\\\ns"' in queries.engine_load


def test_override_fills_placeholders_with_escaped_values():
    template = 'sum(my_queue{namespace="{namespace}",app="{deployment}",track="{track}"}) or vector(0)'
    queries = render_override(template, "team-a", 'de"mo', "canary")
    assert queries.override == 'sum(my_queue{namespace="team-a",app="de\\"mo",track="canary"}) or vector(0)'
    assert queries.engine_load == "" and queries.router_pending == ""
    assert track_queries("team-a", "demo", "stable", override=template).override
    assert track_queries("team-a", "demo", "stable", override=None).engine_load


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ('sum(q{ns="{namespce}"})', "unknown placeholder\\(s\\) \\{namespce\\}"),
        ("   ", "must be a non-empty PromQL expression"),
    ],
)
def test_bad_override_is_refused_with_a_clear_error(template, message):
    with pytest.raises(QueryConfigError, match=message):
        render_override(template, "ns", "demo", "stable")


@pytest.mark.parametrize(
    ("args", "message"),
    [(("ns", "demo", "blue"), "track must be one of stable, canary"), (("", "demo", "stable"), "namespace")],
)
def test_bad_target_is_refused(args, message):
    with pytest.raises(QueryConfigError, match=message):
        default_queries(*args)


# --- parsing: bodies as Prometheus sends them ------------------------------------------

VECTOR_BODY = (
    b'{"status":"success","data":{"resultType":"vector","result":'
    b'[{"metric":{},"value":[1764233000.123,"7"]}]}}'
)
LABELLED_VECTOR_BODY = (
    b'{"status":"success","data":{"resultType":"vector","result":['
    b'{"metric":{"pod":"demo-stable-a"},"value":[1764233000.5,"3"]},'
    b'{"metric":{"pod":"demo-stable-b"},"value":[1764233000.5,"4.5"]}]}}'
)
EMPTY_BODY = b'{"status":"success","data":{"resultType":"vector","result":[]}}'
SCALAR_BODY = b'{"status":"success","data":{"resultType":"scalar","result":[1764233000.1,"0"]}}'
BAD_DATA_BODY = b'{"status":"error","errorType":"bad_data","error":"1:5: parse error: unexpected right parenthesis \')\'"}'
TIMEOUT_BODY = b'{"status":"error","errorType":"timeout","error":"query timed out in expression evaluation"}'
NAN_BODY = (
    b'{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1764233000,"NaN"]}]}}'
)
MATRIX_BODY = (
    b'{"status":"success","data":{"resultType":"matrix","result":'
    b'[{"metric":{},"values":[[1764233000,"1"],[1764233001,"2"]]}]}}'
)


def test_parse_single_sample_vector():
    result = parse_query_response(200, VECTOR_BODY)
    assert result.ok and not result.empty
    assert (result.value, result.timestamp) == (7.0, 1764233000.123)


def test_parse_labelled_vector_keeps_every_sample():
    result = parse_query_response(200, LABELLED_VECTOR_BODY)
    assert [(s.labels["pod"], s.value) for s in result.samples] == [
        ("demo-stable-a", 3.0),
        ("demo-stable-b", 4.5),
    ]
    assert result.value is None  # ambiguous for a single-number reading


def test_parse_empty_vector_is_ok_but_empty():
    result = parse_query_response(200, EMPTY_BODY)
    assert result.ok and result.empty and result.value is None and result.error == ""


def test_parse_scalar():
    result = parse_query_response(200, SCALAR_BODY)
    assert (result.value, result.timestamp) == (0.0, 1764233000.1)


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (400, BAD_DATA_BODY, "HTTP 400: Prometheus bad_data error: 1:5: parse error"),
        (503, TIMEOUT_BODY, "HTTP 503: Prometheus timeout error: query timed out"),
        (502, b"<html><body>502 Bad Gateway</body></html>", "HTTP 502: response is not JSON: '<html>"),
        (200, NAN_BODY, "non-finite value \\(nan\\)"),
        (200, MATRIX_BODY, "returned a matrix"),
        (
            200,
            b'{"status":"success","data":{"resultType":"vector","result":[{"value":[1,"2"]}]}}',
            "malformed",
        ),
        (200, b"[1, 2]", "not a JSON object"),
    ],
)
def test_parse_errors_become_error_results(status, body, message):
    result = parse_query_response(status, body)
    assert not result.ok and result.value is None
    assert re.search(message, result.error), result.error


# --- the client against a canned-response server on 127.0.0.1 --------------------------------


class CannedServer:
    """Answers /api/v1/query from a table of query -> (status, body, delay); records requests."""

    def __init__(self) -> None:
        self.answers: dict[str, tuple[int, bytes, float]] = {}
        self.requests: list[dict[str, list[str]]] = []
        self.release = threading.Event()
        canned = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                url = urlparse(self.path)
                params = parse_qs(url.query)
                canned.requests.append(params)
                status, body, delay = canned.answers.get(params.get("query", [""])[0], (200, EMPTY_BODY, 0.0))
                if delay:
                    canned.release.wait(delay)
                if status == 0:  # drop the connection without an answer
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> CannedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def canned() -> Iterator[CannedServer]:
    with CannedServer() as server:
        yield server


async def test_client_sends_query_and_time_and_parses_the_answer(canned):
    canned.answers["up"] = (200, VECTOR_BODY, 0.0)
    async with PrometheusClient(canned.url + "/", timeout_seconds=2) as client:
        result = await client.query("up", at=1764233000.5)
    assert result.ok and result.value == 7.0
    assert canned.requests == [{"query": ["up"], "time": ["1764233000.500"]}]


async def test_client_returns_prometheus_errors_as_results(canned):
    canned.answers["sum("] = (400, BAD_DATA_BODY, 0.0)
    async with PrometheusClient(canned.url, timeout_seconds=2) as client:
        result = await client.query("sum(")
    assert not result.ok and "bad_data" in result.error


async def test_client_timeout_is_an_error_result_not_an_exception(canned):
    canned.answers["slow"] = (200, VECTOR_BODY, 5.0)
    async with PrometheusClient(canned.url, timeout_seconds=0.3) as client:
        started = time.monotonic()
        result = await client.query("slow")
        elapsed = time.monotonic() - started
    assert not result.ok and "did not answer within 0.3s" in result.error
    assert elapsed < 4  # the client gave up; it did not wait for the server


async def test_client_dropped_connection_is_an_error_result(canned):
    canned.answers["drop"] = (0, b"", 0.0)
    async with PrometheusClient(canned.url, timeout_seconds=2) as client:
        result = await client.query("drop")
    assert not result.ok and "unreachable" in result.error


async def test_client_connection_refused_is_an_error_result():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: connections are refused
        async with PrometheusClient(f"http://127.0.0.1:{port}", timeout_seconds=2) as client:
            result = await client.query("up")
    assert not result.ok and "unreachable: ConnectError" in result.error


async def test_client_uses_an_injected_http_client_and_leaves_it_open(canned):
    canned.answers["up"] = (200, VECTOR_BODY, 0.0)
    async with httpx.AsyncClient() as shared:
        async with PrometheusClient(canned.url, client=shared) as client:
            assert (await client.query("up")).value == 7.0
        assert not shared.is_closed


@pytest.mark.parametrize(("url", "timeout"), [("127.0.0.1:9090", 5.0), ("http://127.0.0.1:9090", 0)])
def test_client_refuses_bad_settings(url, timeout):
    with pytest.raises(QueryConfigError):
        PrometheusClient(url, timeout_seconds=timeout)


async def test_read_track_runs_the_four_default_queries(canned):
    queries = default_queries("ns", "demo", "stable")
    canned.answers[queries.engine_load] = (200, VECTOR_BODY, 0.0)
    canned.answers[queries.engine_pods] = (200, SCALAR_BODY, 0.0)
    canned.answers[queries.router_pending] = (400, BAD_DATA_BODY, 0.0)
    async with PrometheusClient(canned.url, timeout_seconds=2) as client:
        readings = await read_track(client, queries)
    assert readings.engine_load.value == 7.0
    assert readings.engine_pods.value == 0.0
    assert readings.engine_oldest_sample.empty
    assert not readings.router_pending.ok
    assert sorted(r["query"][0] for r in canned.requests) == sorted(
        [queries.engine_load, queries.engine_pods, queries.engine_oldest_sample, queries.router_pending]
    )


# --- assessment: from readings to the decision's signal --------------------------------------

NOW = 1764233000.0


def value(number: float, at: float = NOW) -> QueryResult:
    return QueryResult(ok=True, samples=(Sample(labels={}, value=number, timestamp=at),))


EMPTY = QueryResult(ok=True)
DOWN = QueryResult.failure("Prometheus at http://127.0.0.1:9090 unreachable: ConnectError")


def readings(load=EMPTY, pods=EMPTY, oldest=EMPTY, router=EMPTY) -> TrackReadings:
    return TrackReadings(
        engine_load=load, engine_pods=pods, engine_oldest_sample=oldest, router_pending=router
    )


def test_assess_complete_reading_adds_engine_and_router():
    signal = assess(readings(value(10), value(2), value(NOW - 1), value(3)), ready_replicas=2)
    assert signal == Signal(load=13, complete=True, wake_visible=True, problem="")


def test_assess_prometheus_down_is_missing():
    signal = assess(readings(DOWN, DOWN, DOWN, DOWN), ready_replicas=2)
    assert signal.load is None and not signal.complete and not signal.wake_visible
    assert "unreachable" in signal.problem


def test_assess_no_engine_series_while_pods_are_ready_is_not_zero_load():
    signal = assess(readings(EMPTY, EMPTY, EMPTY, value(0)), ready_replicas=2)
    # The router's 0 is a lower bound only: the decision may not scale down on it.
    assert signal.load == 0 and not signal.complete
    assert "no vLLM queue metrics from any of 2 ready pod(s)" in signal.problem


def test_assess_old_samples_are_stale():
    signal = assess(
        readings(value(4), value(2), value(NOW - 200), value(0)), ready_replicas=2, max_sample_age_seconds=60
    )
    assert signal.load == 0 and not signal.complete
    assert "200s old (stale after 60s)" in signal.problem


def test_assess_some_pods_missing_is_a_lower_bound():
    signal = assess(readings(value(4), value(1), value(NOW - 1), value(0)), ready_replicas=3)
    assert signal.load == 4 and not signal.complete
    assert "from 1 of 3 ready pods" in signal.problem


def test_assess_zero_ready_pods_reads_the_router_alone():
    signal = assess(readings(EMPTY, EMPTY, EMPTY, value(2)), ready_replicas=0)
    assert signal == Signal(load=2, complete=True, wake_visible=True, problem="")


def test_assess_zero_ready_pods_without_router_series_is_not_complete():
    signal = assess(readings(EMPTY, EMPTY, EMPTY, EMPTY), ready_replicas=0)
    assert signal.load == 0 and not signal.complete and not signal.wake_visible
    assert "no pixtral_router_pending_requests series" in signal.problem


def test_assess_router_missing_while_pods_serve_keeps_the_engine_reading_but_hides_wake():
    signal = assess(readings(value(5), value(1), value(NOW), EMPTY), ready_replicas=1)
    assert signal.load == 5 and signal.complete and not signal.wake_visible


def test_assess_override():
    assert assess(TrackReadings(override=value(6)), ready_replicas=1) == Signal(load=6)
    assert "no sample" in assess(TrackReadings(override=EMPTY), ready_replicas=1).problem
    two = QueryResult(ok=True, samples=(Sample({}, 1, NOW), Sample({}, 2, NOW)))
    assert "returned 2 series" in assess(TrackReadings(override=two), ready_replicas=1).problem
    assert assess(TrackReadings(override=DOWN), ready_replicas=1).load is None


# --- the default queries against a real Prometheus ------------------------------------------

PROMETHEUS = shutil.which("prometheus")

POD_A = (
    'vllm:num_requests_waiting{engine="0",model_name="pixtral"} 3\n'
    'vllm:num_requests_running{engine="0",model_name="pixtral"} 2\n'
)
POD_B = (
    'vllm:num_requests_waiting{engine="0",model_name="pixtral"} 1\n'
    'vllm:num_requests_running{engine="0",model_name="pixtral"} 4\n'
)
POD_CANARY = (
    'vllm:num_requests_waiting{engine="0",model_name="pixtral"} 0\n'
    'vllm:num_requests_running{engine="0",model_name="pixtral"} 1\n'
)
OTHER_DEPLOYMENT = (
    'vllm:num_requests_waiting{engine="0",model_name="pixtral"} 100\n'
    'vllm:num_requests_running{engine="0",model_name="pixtral"} 100\n'
    "pixtral_router_pending_requests 100\n"
)
# The router's own series (runtime/router/metrics.py: labelled with its deployment, which
# Prometheus keeps as exported_deployment beside the target's label, and with the track a request
# was routed to), plus an unlabelled one as older routers export it (counts for stable).
ROUTER = (
    'pixtral_router_pending_requests{deployment="demo"} 2\n'
    'pixtral_router_pending_requests{deployment="demo",track="stable"} 0\n'
    'pixtral_router_pending_requests{deployment="demo",track="canary"} 1\n'
    'pixtral_router_fallback_requests{deployment="demo",track="stable"} 0\n'
    'pixtral_router_fallback_requests{deployment="demo",track="canary"} 3\n'
)


class Exporter:
    """Serves one metrics page per path; a page set to None answers 503 (a target that is down)."""

    def __init__(self, pages: dict[str, str | None]) -> None:
        self.pages = pages
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                page = exporter.pages.get(self.path)
                body = (page or "unavailable\n").encode()
                self.send_response(200 if page is not None else 503)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.address = f"127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def live_prometheus(tmp_path_factory) -> Iterator[tuple[str, Exporter]]:
    if PROMETHEUS is None:
        pytest.skip("prometheus binary not installed (make system-deps installs Debian's)")
    exporter = Exporter(
        {
            "/pod-a": POD_A,
            "/pod-b": POD_B,
            "/pod-c": POD_CANARY,
            "/router": ROUTER,
            "/other": OTHER_DEPLOYMENT,
        }
    )
    # The labels Prometheus' pod discovery gives the real pods (e2e/localcluster/prometheus.py).
    targets = {
        "pod-a": {"namespace": "team-a", "deployment": "demo", "track": "stable", "pod": "demo-stable-a"},
        "pod-b": {"namespace": "team-a", "deployment": "demo", "track": "stable", "pod": "demo-stable-b"},
        "pod-c": {"namespace": "team-a", "deployment": "demo", "track": "canary", "pod": "demo-canary-c"},
        "router": {"namespace": "team-a", "deployment": "demo", "pod": "demo-router-x"},
        "other": {"namespace": "team-a", "deployment": "other", "track": "stable", "pod": "other-stable-a"},
    }
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": name,
                "metrics_path": f"/{name}",
                "static_configs": [{"targets": [exporter.address], "labels": labels}],
            }
            for name, labels in targets.items()
        ],
    }
    workdir = tmp_path_factory.mktemp("prometheus")
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = open(workdir / "prometheus.log", "wb")  # noqa: SIM115 (closed in teardown)
    process = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _series_count(url) >= 5, 30, "Prometheus scraping all five targets", workdir)
        yield url, exporter
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        log.close()
        exporter.close()


def _series_count(url: str) -> int:
    try:
        answer = httpx.get(f"{url}/api/v1/query", params={"query": "count(up == 1)"}, timeout=1)
    except httpx.HTTPError:
        return 0
    result = parse_query_response(answer.status_code, answer.content)
    return int(result.value or 0)


def wait_for(condition, timeout: float, what: str, workdir: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    log = (workdir / "prometheus.log").read_text()[-2000:] if workdir else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{log}")


async def live_signal(url: str, track: str, ready_replicas: int) -> tuple[TrackReadings, Signal]:
    async with PrometheusClient(url, timeout_seconds=5) as client:
        readings = await read_track(client, default_queries("team-a", "demo", track))
    return readings, assess(readings, ready_replicas=ready_replicas, max_sample_age_seconds=30)


async def test_live_default_queries_read_each_track(live_prometheus):
    url, _ = live_prometheus
    stable_readings, stable = await live_signal(url, "stable", ready_replicas=2)
    # Pods a and b: (3 + 1) waiting + (2 + 4) running; router: 2 unlabelled pending.
    assert stable_readings.engine_load.value == 10
    assert stable_readings.engine_pods.value == 2
    age = stable_readings.engine_oldest_sample.timestamp - stable_readings.engine_oldest_sample.value
    assert 0 <= age < 30, age
    assert stable_readings.router_pending.value == 2
    assert stable == Signal(load=12, complete=True, wake_visible=True, problem="")

    async with PrometheusClient(url, timeout_seconds=5) as client:
        raw = await client.query('pixtral_router_pending_requests{deployment="demo"}')
    # The target's deployment label wins; the router's own copy is kept aside, track stays absent.
    unlabelled = [s.labels for s in raw.samples if "track" not in s.labels]
    assert len(unlabelled) == 1 and unlabelled[0]["exported_deployment"] == "demo"

    canary_readings, canary = await live_signal(url, "canary", ready_replicas=1)
    # 1 held + 3 served by stable meanwhile.
    assert canary_readings.engine_load.value == 1 and canary_readings.router_pending.value == 4
    assert canary == Signal(load=5, complete=True, wake_visible=True, problem="")


async def test_live_override_query(live_prometheus):
    url, _ = live_prometheus
    template = 'sum(vllm:num_requests_waiting{deployment="{deployment}",track="{track}"}) or vector(0)'
    async with PrometheusClient(url, timeout_seconds=5) as client:
        readings = await read_track(client, render_override(template, "team-a", "demo", "stable"))
        broken = await read_track(
            client, render_override("sum(vllm:num_requests_waiting", "team-a", "demo", "stable")
        )
    assert assess(readings, ready_replicas=2) == Signal(load=4)
    assert broken.override is not None and "bad_data" in broken.override.error


async def test_live_read_signal_and_a_bad_override_that_holds(live_prometheus):
    url, _ = live_prometheus
    async with PrometheusClient(url, timeout_seconds=5) as client:
        stable = await read_signal(client, "team-a", "demo", "stable", ready_replicas=2)
        bad = await read_signal(client, "team-a", "demo", "stable", 2, prometheus_query='sum(q{x="{nope}"})')
    assert stable.load == 12 and stable.complete
    assert bad.load is None and "unknown placeholder(s) {nope}" in bad.problem


async def test_live_target_going_down_turns_the_signal_partial(live_prometheus):
    url, exporter = live_prometheus
    exporter.pages["/pod-b"] = None
    try:
        # Prometheus writes staleness markers for a target that fails its scrape, so pod b's
        # series leave instant queries within a scrape interval or two.
        deadline = time.monotonic() + 15
        while (await live_signal(url, "stable", 2))[0].engine_pods.value != 1:
            assert time.monotonic() < deadline, "pod b's series still present 15 s after its target went down"
            await asyncio.sleep(0.2)
        readings, signal_now = await live_signal(url, "stable", ready_replicas=2)
        assert readings.engine_load.value == 5
        assert signal_now.load == 7 and not signal_now.complete
        assert "from 1 of 2 ready pods" in signal_now.problem
    finally:
        exporter.pages["/pod-b"] = POD_B


def test_autoscaler_modules_import_neither_kopf_nor_the_kubernetes_client():
    # The timer wraps these modules; they must stay testable and reusable without an API server.
    code = (
        "import sys, pixtral_operator.scale_decision, pixtral_operator.prometheus; "
        "print(sorted(m for m in ('kopf', 'kubernetes') if m in sys.modules))"
    )
    answer = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert answer.stdout.strip() == "[]"


# --- the fleet: one query per signal for every object -----------------------------------------


def labelled(value: float, **labels: str) -> Sample:
    return Sample(labels, value, 1000.0)


def test_split_fleet_cuts_one_track_out_and_keeps_no_data_apart_from_failure():
    ours = {"namespace": "team-a", "deployment": "demo"}
    results = FleetResults(
        engine_load=QueryResult(ok=True, samples=(labelled(5, **ours, track="stable"), labelled(9, **ours, track="canary"),
                                                  labelled(7, namespace="team-b", deployment="demo", track="stable"))),
        engine_pods=QueryResult(ok=True, samples=(labelled(2, **ours, track="stable"),)),
        engine_oldest_sample=QueryResult.failure("HTTP 503"),
        router_pending=QueryResult(ok=True, samples=(labelled(1, **ours), labelled(2, **ours, track="stable"),
                                                     labelled(4, **ours, track="canary"))),
    )
    stable = split_fleet(results, "team-a", "demo", "stable")
    assert stable.engine_load.value == 5 and stable.engine_pods.value == 2
    assert not stable.engine_oldest_sample.ok and stable.engine_oldest_sample.error == "HTTP 503"
    # An unlabelled router series (older routers) counts for stable only.
    assert sorted(s.value for s in stable.router_pending.samples) == [1, 2]
    canary = split_fleet(results, "team-a", "demo", "canary")
    assert canary.engine_load.value == 9 and canary.engine_pods.empty
    assert [s.value for s in canary.router_pending.samples] == [4]
    absent = split_fleet(results, "team-a", "nobody", "stable")
    assert absent.engine_load.empty and absent.router_pending.empty
    with pytest.raises(QueryConfigError):
        split_fleet(results, "team-a", "demo", "shadow")


class CountingPrometheus:
    def __init__(self, answer: QueryResult):
        self.answer = answer
        self.queries: list[str] = []

    async def query(self, promql: str, at: float | None = None) -> QueryResult:
        self.queries.append(promql)
        return self.answer


async def test_fleet_reads_four_queries_per_period_for_any_number_of_objects():
    client = CountingPrometheus(QueryResult(ok=True, samples=()))
    fleet = FleetReader(client, max_age_seconds=2)
    for name in (f"pxd-{i}" for i in range(50)):
        await read_fleet_signal(fleet, 1000.0, "team", name, "stable", 0)
    assert len(client.queries) == 4 and fleet.reads == 1
    await read_fleet_signal(fleet, 1001.9, "team", "pxd-0", "stable", 0)
    assert len(client.queries) == 4
    await read_fleet_signal(fleet, 1002.0, "team", "pxd-0", "stable", 0)
    assert len(client.queries) == 8, "a read as old as max_age_seconds is read again"
    # A spec's own prometheusQuery cannot be grouped: it runs for its object.
    await read_fleet_signal(fleet, 1002.5, "team", "pxd-0", "stable", 0, prometheus_query="sum(x) or vector(0)")
    assert client.queries[-1] == "sum(x) or vector(0)" and len(client.queries) == 9
    with pytest.raises(QueryConfigError):
        FleetReader(client, max_age_seconds=0)


async def test_live_fleet_queries_give_each_track_the_signal_of_its_own_queries(live_prometheus):
    url, _ = live_prometheus
    async with PrometheusClient(url, timeout_seconds=5) as client:
        fleet = FleetReader(client, max_age_seconds=60)
        results = await fleet.results(1000.0)
        for deployment, track, ready in (("demo", "stable", 2), ("demo", "canary", 1), ("other", "stable", 1)):
            own = await read_track(client, default_queries("team-a", deployment, track))
            cut = split_fleet(results, "team-a", deployment, track)
            for part in ("engine_load", "engine_pods", "router_pending"):
                assert getattr(cut, part).ok, (deployment, track, part, getattr(cut, part).error)
                assert sum(x.value for x in getattr(cut, part).samples) == getattr(own, part).value, (deployment, track, part)
            assert cut.engine_oldest_sample.value is not None
            mine = assess(cut, ready_replicas=ready, max_sample_age_seconds=30)
            theirs = assess(own, ready_replicas=ready, max_sample_age_seconds=30)
            assert mine == theirs, (deployment, track)
    assert fleet.reads == 1
    assert all("by (namespace, deployment, track)" in q for q in vars(fleet_queries()).values())
