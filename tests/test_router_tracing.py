"""The router's spans (tracing.py): exported over OTLP to a receiver on loopback, their context sent
upstream as traceparent, a client's own context kept as a link only, nothing secret in them."""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
from pixtral_runtime.router.config import ConfigError, TracingPolicy, parse_config
from pixtral_runtime.router.guard import RequestInfo
from pixtral_runtime.router.tracing import (
    format_traceparent,
    parse_traceparent,
    request_attributes,
    span_name,
)
from pixtral_runtime.router.usage import Tap
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from test_router_app import AUTH, KEY, config, free_port, router, serve

pytestmark = pytest.mark.timeout(60)
SECRET_PROMPT = "the prompt text that must stay out of every span"
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_TRACEPARENT = f"00-{CLIENT_TRACE}-00f067aa0ba902b7-01"

_spec = importlib.util.spec_from_file_location(
    "otlp_receiver", Path(__file__).resolve().parents[1] / "e2e" / "tools" / "otlp_receiver.py")
otlp_receiver = importlib.util.module_from_spec(_spec)
sys.modules["otlp_receiver"] = otlp_receiver
_spec.loader.exec_module(otlp_receiver)


@pytest.mark.parametrize("value,expected", [
    (CLIENT_TRACEPARENT.encode(), (int(CLIENT_TRACE, 16), 0x00f067aa0ba902b7, 1)),
    (b" 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00 ", (int(CLIENT_TRACE, 16), 0x00f067aa0ba902b7, 0)),
    (None, None), (b"", None), (b"garbage", None),
    (b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None),  # an unknown version
    (b"00-00000000000000000000000000000000-00f067aa0ba902b7-01", None),  # all-zero trace ID
    (b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", None),  # all-zero span ID
    (b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", None),  # upper-case hex
    (b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", None),
])
def test_parse_traceparent(value, expected) -> None:
    assert parse_traceparent(value) == expected


def test_format_traceparent_round_trips() -> None:
    header = format_traceparent(0xABC, 0x12, True)
    assert header == b"00-00000000000000000000000000000abc-0000000000000012-01"
    assert parse_traceparent(header) == (0xABC, 0x12, 1)
    assert format_traceparent(1, 2, False).endswith(b"-00")


def test_span_names_do_not_grow_with_what_callers_send() -> None:
    assert span_name("POST", "/v1/chat/completions") == "POST /v1/chat/completions"
    assert span_name("GET", None) == "GET"


def test_request_attributes_hold_sizes_images_and_tokens() -> None:
    request = RequestInfo(0.0)
    request.request_id, request.tenant, request.track = b"rid-7", "team-a", "canary"
    request.backend, request.status, request.request_bytes, request.response_bytes = "http://10.0.0.7:8000", 200, 9, 31
    request.images, request.pixels = 2, 3_000_000
    tap = request.tap = Tap()
    tap.prompt, tap.completion, tap.reported = 11, 4, True
    assert request_attributes(request, "POST", "/v1/chat/completions" + "x" * 500) == {
        "http.request.method": "POST", "url.path": ("/v1/chat/completions" + "x" * 500)[:200],
        "http.response.status_code": 200, "http.request.body.size": 9, "http.response.body.size": 31,
        "pixtral.tenant": "team-a", "pixtral.track": "canary", "pixtral.request_id": "rid-7",
        "pixtral.backend": "http://10.0.0.7:8000", "pixtral.images": 2, "pixtral.megapixels": 3.0,
        "gen_ai.usage.input_tokens": 11, "gen_ai.usage.output_tokens": 4,
    }
    refused = RequestInfo(0.0)
    refused.status = 401
    assert "pixtral.backend" not in request_attributes(refused, "POST", "/v1/chat/completions")


@pytest.mark.parametrize("tracing,message", [
    ({"endpoint": "collector:4317"}, "tracing.endpoint must be an http:// or https:// URL"),
    ({"endpoint": "http://c:4317", "protocol": "http/json"}, "tracing.protocol must be one of grpc, http/protobuf"),
    ({"endpoint": "http://c:4317", "samplingRatio": 1.5}, "tracing.samplingRatio must be a number in [0.0, 1.0]"),
    ({"endpoint": "http://c:4317", "samplingRatio": True}, "tracing.samplingRatio must be a number"),
])
def test_bad_tracing_config_names_the_field(tracing, message) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        parse_config(config({"stable": ["http://127.0.0.1:1"]}, tracing=tracing))


def test_tracing_is_off_by_default() -> None:
    assert parse_config(config({"stable": ["http://127.0.0.1:1"]})).tracing == TracingPolicy()
    assert TracingPolicy().endpoint is None


@contextmanager
def receiver():
    """The OTLP receiver on loopback: (store, http base URL, grpc URL)."""
    store = otlp_receiver.SpanStore()
    http = otlp_receiver.http_server(store, "127.0.0.1", 0)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    grpc_port = free_port()
    grpc = otlp_receiver.grpc_server(store, "127.0.0.1", grpc_port)
    grpc.start()
    try:
        yield store, f"http://127.0.0.1:{http.server_address[1]}", f"http://127.0.0.1:{grpc_port}"
    finally:
        http.shutdown()
        http.server_close()
        grpc.stop(0)


class TracedUpstream:
    """Answers like vLLM with a usage block; records the trace headers it was sent."""

    def __init__(self) -> None:
        self.trace_headers: list[dict[str, str]] = []
        self.app = Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"])])

    async def chat(self, request: Request):
        self.trace_headers.append({k: v for k, v in request.headers.items() if k in ("traceparent", "tracestate")})
        return JSONResponse({"object": "chat.completion", "choices": [],
                             "usage": {"prompt_tokens": 13, "completion_tokens": 5, "total_tokens": 18}})


BODY = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": SECRET_PROMPT}]}).encode()


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
async def test_one_span_per_tenant_request_its_context_sent_upstream(protocol) -> None:
    up = TracedUpstream()
    with receiver() as (store, http_url, grpc_url):
        endpoint = f"{http_url}/v1/traces" if protocol == "http/protobuf" else grpc_url
        cfg = config({"stable": []}, tracing={"endpoint": endpoint, "protocol": protocol})
        async with serve(up.app) as up_url:
            cfg["backends"] = {"stable": [up_url]}
            async with router(cfg) as client:
                ok = await client.post("/v1/chat/completions", content=BODY, headers={
                    **AUTH, "x-request-id": "rid-1", "traceparent": CLIENT_TRACEPARENT, "tracestate": "vendor=secret"})
                refused = await client.post("/v1/chat/completions", content=BODY,
                                            headers={"authorization": "Bearer sk-wrong"})
                assert (await client.get("/healthz")).status_code == 200
                assert (await client.get("/metrics")).status_code == 200
        # The router has shut down: its tracer exported everything it held.
        spans = store.all()

    assert ok.status_code == 200 and refused.status_code == 401
    assert [s["name"] for s in spans] == ["POST /v1/chat/completions"] * 2, spans
    served, denied = sorted(spans, key=lambda s: s["attributes"]["http.response.status_code"])
    assert served["service"] == "pixtral-router" and served["resource"]["pixtral.deployment"] == "t"
    assert served["kind"] == 2  # SPAN_KIND_SERVER
    attributes = served["attributes"]
    assert attributes["pixtral.tenant"] == "team-a" and attributes["pixtral.track"] == "stable"
    assert attributes["pixtral.backend"] == up_url and attributes["pixtral.request_id"] == "rid-1"
    assert attributes["gen_ai.usage.input_tokens"] == 13 and attributes["gen_ai.usage.output_tokens"] == 5
    assert attributes["http.request.body.size"] == len(BODY)
    # Our span is a root; the client's context is a link, and never reached the backend.
    assert served["parent_span_id"] == "" and served["trace_id"] != CLIENT_TRACE
    assert served["links"] == [{"trace_id": CLIENT_TRACE, "span_id": "00f067aa0ba902b7"}]
    assert up.trace_headers == [{"traceparent": f"00-{served['trace_id']}-{served['span_id']}-01"}]
    assert denied["attributes"]["http.response.status_code"] == 401 and denied["attributes"]["pixtral.tenant"] == "-"
    text = json.dumps(spans)
    assert SECRET_PROMPT not in text and KEY not in text and "sk-wrong" not in text and "vendor=secret" not in text


async def test_unsampled_requests_export_nothing_and_tell_the_backend() -> None:
    up = TracedUpstream()
    with receiver() as (store, http_url, _):
        async with serve(up.app) as up_url:
            cfg = config({"stable": [up_url]}, tracing={"endpoint": f"{http_url}/v1/traces",
                                                         "protocol": "http/protobuf", "samplingRatio": 0})
            async with router(cfg) as client:
                for _ in range(3):
                    assert (await client.post("/v1/chat/completions", content=BODY, headers=AUTH)).status_code == 200
        assert store.all() == []
    # vLLM's parent-based sampler reads the flag: no engine span for an untraced request.
    assert len(up.trace_headers) == 3 and all(h["traceparent"].endswith("-00") for h in up.trace_headers)


async def test_tracing_follows_config_reloads_without_a_restart() -> None:
    up = TracedUpstream()
    with receiver() as (store, http_url, _):
        async with serve(up.app) as up_url:
            plain = config({"stable": [up_url]})
            traced = config({"stable": [up_url]}, tracing={"endpoint": f"{http_url}/v1/traces",
                                                            "protocol": "http/protobuf"})
            async with router(plain) as client:
                app = client.app
                assert app.tracer is None
                assert (await client.post("/v1/chat/completions", content=BODY, headers=AUTH)).status_code == 200
                app.state.apply_config(parse_config(traced))
                first = app.tracer
                assert first is not None
                app.state.apply_config(parse_config(traced))  # the same policy: the same tracer
                assert app.tracer is first
                assert (await client.post("/v1/chat/completions", content=BODY, headers=AUTH)).status_code == 200
                app.state.apply_config(parse_config(plain))
                assert app.tracer is None
                assert (await client.post("/v1/chat/completions", content=BODY, headers=AUTH)).status_code == 200
            # The tracer switched off was shut down in a thread: its span arrives.
            for _ in range(200):  # bounded wait
                if store.all():
                    break
                threading.Event().wait(0.02)
        assert len(store.all()) == 1
    assert [bool(h) for h in up.trace_headers] == [False, True, False]


def test_the_sampling_rule_is_the_sdks() -> None:
    from opentelemetry.sdk.trace.sampling import Decision, TraceIdRatioBased
    from pixtral_runtime.router.tracing import sampled

    rng = __import__("random").Random(7)
    for ratio in (0.0, 0.1, 0.5, 1.0):
        sdk = TraceIdRatioBased(ratio)
        for _ in range(500):
            trace_id = rng.getrandbits(128)
            expected = sdk.should_sample(None, trace_id, "x").decision is Decision.RECORD_AND_SAMPLE
            assert sampled(trace_id, ratio) == expected
