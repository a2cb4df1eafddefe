"""The access log: one JSON line per tenant request, on standard output.

Fields: `time` (UTC, ISO 8601 with milliseconds), `request_id`, `method`, `path`, `tenant`,
`track`, `backend`, `status`, `duration_ms` (from the first byte of the request to the last of
the answer), `request_bytes`, `response_bytes`, and `prompt_tokens`/`completion_tokens` when the
engine reported them. Never the key, the query string, headers or any of the body: the prompt
and the images stay out of the logs. The probes and /metrics are not logged (they are not
requests of a tenant, and would drown the ones that are).

Cost on the request path: one dict and one orjson encode, and one write(2) of the line, so a
line is out even if the process is killed the next moment (docs/benchmarks.md, "Request IDs
and access log").
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

try:
    import orjson

    _dumps: Callable[[Any], bytes] = orjson.dumps
except ImportError:  # pragma: no cover - depends on the environment
    import json

    def _dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()

# A path beyond this is cut: the path is the caller's, the log line should stay a line.
MAX_PATH = 200


def utc_stamp(wall: float) -> str:
    seconds = int(wall)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int((wall - seconds) * 1000):03d}Z"


def access_line(request: Any, method: str, path: str, *, wall: float, now: float) -> bytes:
    """The log line of a finished request (`request`: guard.RequestInfo; `now`: perf_counter)."""
    fields: dict[str, Any] = {
        "time": utc_stamp(wall),
        "request_id": request.request_id.decode("ascii") if request.request_id else None,
        "method": method,
        "path": path[:MAX_PATH],
        "tenant": request.tenant,
        "track": request.track,
        "backend": request.backend,
        "status": request.status,
        "duration_ms": round((now - request.started) * 1000.0, 3),
        "request_bytes": request.request_bytes,
        "response_bytes": request.response_bytes,
    }
    tap = request.tap
    if tap is not None and tap.reported:
        fields["prompt_tokens"] = tap.prompt
        fields["completion_tokens"] = tap.completion
    return _dumps(fields) + b"\n"


class AccessLog:
    """Writes access lines to a file descriptor (standard output unless told otherwise)."""

    __slots__ = ("fd",)

    def __init__(self, fd: int = 1) -> None:
        self.fd = fd

    def record(self, request: Any, method: str, path: str) -> None:
        line = access_line(request, method, path, wall=time.time(), now=time.perf_counter())
        try:
            os.write(self.fd, line)
        except OSError:
            pass  # a closed or full log pipe must not fail the request that was already answered
