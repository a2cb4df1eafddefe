"""OpenTelemetry tracing of tenant requests: one SERVER span per request, its context sent to vLLM.

The span holds what it takes to find a slow or failed request (tenant, track, backend, status,
sizes, images, token counts, the request ID) and nothing a tenant sent: no key, no header, no
prompt text, no image. Its W3C `traceparent` goes upstream with the request, so the `llm_request`
span vLLM makes (the operator starts it with --otlp-traces-endpoint) joins the same trace.

A client's own `traceparent` is not taken as the parent. A parent decides the sampling (its flag),
so a tenant could have every one of its requests traced whatever the ratio, and it could write
spans into any trace it names. It becomes a span link instead: the tenant's trace still leads to
ours. The client's `traceparent` and `tracestate` never reach vLLM (headers.DROP_REQUEST).

Off (the default: no endpoint), this costs the request path one `is None` test. On, the router
draws the sampling decision itself, from the trace ID as the SDK's TraceIdRatioBased does, and an
unsampled request gets only its IDs (for the traceparent that tells vLLM not to trace it either),
where the SDK would still build its sampler's inputs, a span object and its context. A sampled
request's span is made and ended on the event loop and the SDK's BatchSpanProcessor exports from
its own thread; the cost of both is in docs/benchmarks.md, "Tracing".
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from typing import Any

from .config import TracingPolicy

TRACEPARENT = b"traceparent"
INSTRUMENTATION = "pixtral_runtime.router"
SERVICE_NAME = "pixtral-router"
# version "00", then trace ID, parent span ID and flags in lower-case hex (W3C Trace Context 3.2).
_TRACEPARENT = re.compile(rb"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_SAMPLED = 0x01
# A path is the caller's; the span keeps a bounded prefix, as the access log does.
MAX_PATH = 200


def parse_traceparent(value: bytes | None) -> tuple[int, int, int] | None:
    """(trace ID, span ID, flags) of a valid version-00 traceparent, else None (all-zero IDs are invalid)."""
    if value is None:
        return None
    match = _TRACEPARENT.fullmatch(value.strip())
    if match is None:
        return None
    trace_id, span_id = int(match.group(1), 16), int(match.group(2), 16)
    if not trace_id or not span_id:
        return None
    return trace_id, span_id, int(match.group(3), 16)


def format_traceparent(trace_id: int, span_id: int, sampled: bool) -> bytes:
    return b"00-%032x-%016x-%02x" % (trace_id, span_id, _SAMPLED if sampled else 0)


def sampled(trace_id: int, ratio: float) -> bool:
    """TraceIdRatioBased's rule: the trace ID's lower 64 bits below ratio x 2^64."""
    return (trace_id & 0xFFFF_FFFF_FFFF_FFFF) < round(ratio * 2**64)


class Unsampled:
    """An untraced request: its IDs only, sent upstream with the sampled flag off."""

    __slots__ = ("trace_id", "span_id")

    def __init__(self, trace_id: int, span_id: int) -> None:
        self.trace_id = trace_id
        self.span_id = span_id


def span_name(method: str, route: str | None) -> str:
    """`METHOD /route` for the router's own routes, the method alone for any other path (OTel's HTTP
    conventions: a name must not grow with what callers send)."""
    return f"{method} {route}" if route else method


def request_attributes(request: Any, method: str, path: str) -> dict[str, Any]:
    """The span's attributes for a finished request (`request`: guard.RequestInfo)."""
    attributes: dict[str, Any] = {
        "http.request.method": method,
        "url.path": path[:MAX_PATH],
        "http.response.status_code": request.status,
        "http.request.body.size": request.request_bytes,
        "http.response.body.size": request.response_bytes,
        "pixtral.tenant": request.tenant,
        "pixtral.track": request.track,
    }
    if request.request_id:
        attributes["pixtral.request_id"] = request.request_id.decode("ascii")
    if request.backend:
        attributes["pixtral.backend"] = request.backend
    if request.images:
        attributes["pixtral.images"] = request.images
        attributes["pixtral.megapixels"] = round(request.pixels / 1e6, 3)
    tap = request.tap
    if tap is not None and tap.reported:
        # OTel's GenAI conventions (vLLM's own span states the same counts under its older names).
        attributes["gen_ai.usage.input_tokens"] = tap.prompt
        attributes["gen_ai.usage.output_tokens"] = tap.completion
    return attributes


def exporter_for(policy: TracingPolicy) -> Any:
    """The OTLP span exporter for the policy's protocol, as vLLM picks its own (vllm/tracing/otel.py)."""
    assert policy.endpoint, "tracing is off without an endpoint"
    if policy.protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        return HttpExporter(endpoint=policy.endpoint)
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

    return GrpcExporter(endpoint=policy.endpoint, insecure=policy.endpoint.startswith("http://"))


class RequestTracer:
    """Spans for one tracing policy. A new policy (a ConfigMap reload) gets a new RequestTracer; the
    old one is shut down, which exports what it still holds."""

    def __init__(self, policy: TracingPolicy, resource: Mapping[str, str], exporter: Any = None) -> None:
        # Imported here: without tracing the router never loads the SDK.
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ALWAYS_ON
        from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

        self.policy = policy
        # The decision is made in start(); what reaches the SDK is to be recorded.
        self.provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME, **resource}),
                                       sampler=ALWAYS_ON)
        self.provider.add_span_processor(BatchSpanProcessor(exporter or exporter_for(policy)))
        self._tracer = self.provider.get_tracer(INSTRUMENTATION)
        self._server = SpanKind.SERVER
        self._link = Link
        self._remote = lambda t, s, f: SpanContext(t, s, is_remote=True, trace_flags=TraceFlags(f))
        self._error = Status(StatusCode.ERROR)
        # IDs need to be unique, not secret (the SDK's own generator is random.getrandbits too).
        self._bits = random.getrandbits

    def start(self, method: str, route: str | None, client_traceparent: bytes | None) -> Any:
        ratio = self.policy.sampling_ratio
        if ratio < 1.0:
            trace_id = self._bits(128) or 1
            if not sampled(trace_id, ratio):
                return Unsampled(trace_id, self._bits(64) or 1)
        client = parse_traceparent(client_traceparent)
        links = [self._link(self._remote(*client))] if client else None
        return self._tracer.start_span(span_name(method, route), kind=self._server, links=links)

    @staticmethod
    def traceparent(span: Any) -> bytes:
        """The header that makes vLLM's span a child of `span`; an unsampled request says so, and
        vLLM (parent-based) then makes no span of its own."""
        if type(span) is Unsampled:
            return format_traceparent(span.trace_id, span.span_id, False)
        context = span.get_span_context()
        return format_traceparent(context.trace_id, context.span_id, True)

    def finish(self, span: Any, request: Any, method: str, path: str) -> None:
        if type(span) is Unsampled:
            return
        span.set_attributes(request_attributes(request, method, path))
        if request.status >= 500:
            span.set_status(self._error)
        span.end()

    def shutdown(self) -> None:
        """Export what is queued and stop the exporter thread (blocking: call it off the event loop)."""
        self.provider.shutdown()
