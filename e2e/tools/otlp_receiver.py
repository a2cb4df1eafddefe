"""A small OTLP traces receiver for tests: it keeps the spans it is sent and shows them as JSON.

OTLP/HTTP (`POST /v1/traces`, protobuf) and, where grpcio is installed, OTLP/gRPC (the
TraceService's Export). `GET /spans` answers every span kept so far as a JSON list; at most
MAX_SPANS are kept (the oldest go first). `GET /stats` counts every span received. It runs as a
pod in the e2e tracing test (the router image holds opentelemetry-proto and grpcio), in-process on
loopback in the router's unit tests, and as a process on loopback in bench/bench_router.py --tracing.

Why not the OpenTelemetry Collector: its core distribution is a few hundred Go modules, several
minutes of a cold build on two cores for a test that needs only "which spans arrived"
(docs/operations.md, "Tracing").
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

MAX_SPANS = 10_000
MAX_BODY = 16 * 1024 * 1024


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    if kind in ("string_value", "bool_value", "int_value", "double_value"):
        return getattr(any_value, kind)
    if kind == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    return None


def _attributes(key_values: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in key_values}


def spans_of(request: Any) -> list[dict[str, Any]]:
    """The spans of an ExportTraceServiceRequest as plain dicts, each with its resource's attributes."""
    out = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                out.append({
                    "trace_id": span.trace_id.hex(),
                    "span_id": span.span_id.hex(),
                    "parent_span_id": span.parent_span_id.hex(),
                    "name": span.name,
                    "kind": span.kind,
                    "service": resource.get("service.name"),
                    "resource": resource,
                    "scope": scope_spans.scope.name,
                    "attributes": _attributes(span.attributes),
                    "links": [{"trace_id": link.trace_id.hex(), "span_id": link.span_id.hex()} for link in span.links],
                    "status_code": span.status.code,
                    "start_unix_nano": span.start_time_unix_nano,
                    "end_unix_nano": span.end_time_unix_nano,
                })
    return out


class SpanStore:
    def __init__(self, limit: int = MAX_SPANS) -> None:
        self._spans: collections.deque[dict[str, Any]] = collections.deque(maxlen=limit)
        self._lock = threading.Lock()
        self.received = 0  # every span ever added, kept or not

    def add(self, payload: bytes) -> None:
        request = trace_service_pb2.ExportTraceServiceRequest()
        request.ParseFromString(payload)
        self.add_request(request)

    def add_request(self, request: Any) -> None:
        spans = spans_of(request)
        with self._lock:
            self._spans.extend(spans)
            self.received += len(spans)

    def all(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._spans)


def http_server(store: SpanStore, host: str, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            length = int(self.headers.get("content-length") or 0)
            if self.path != "/v1/traces" or not 0 < length <= MAX_BODY:
                self.send_error(404 if self.path != "/v1/traces" else 400)
                return
            payload = self.rfile.read(length)
            if self.headers.get("content-encoding") == "gzip":
                payload = gzip.decompress(payload)
            try:
                store.add(payload)
            except Exception as exc:  # a malformed export: say so, keep serving
                self.send_error(400, str(exc)[:200])
                return
            body = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802
            answers = {"/spans": store.all, "/stats": lambda: {"received": store.received}, "/healthz": lambda: "ok"}
            if self.path not in answers:
                self.send_error(404)
                return
            body = json.dumps(answers[self.path]()).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:  # quiet: the test reads /spans, not this log
            pass

    return ThreadingHTTPServer((host, port), Handler)


def grpc_server(store: SpanStore, host: str, port: int) -> Any:
    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

    class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 (the service's method name)
            store.add_request(request)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(), server)
    server.add_insecure_port(f"{host}:{port}")
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description="An OTLP traces receiver that keeps what it is sent (GET /spans).")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--http-port", type=int, default=4318)
    parser.add_argument("--grpc-port", type=int, default=4317)
    args = parser.parse_args()
    store = SpanStore()
    grpc = grpc_server(store, args.host, args.grpc_port)
    grpc.start()
    print(f"OTLP receiver: http on {args.http_port}, grpc on {args.grpc_port}", flush=True)
    http_server(store, args.host, args.http_port).serve_forever()


if __name__ == "__main__":
    main()
