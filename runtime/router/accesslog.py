"""The access log: one JSON line per tenant request, on standard output.

Fields: `time` (UTC, ISO 8601 with milliseconds), `request_id`, `method`, `path`, `tenant`,
`track`, `backend`, `status`, `duration_ms` (from the first byte of the request to the last of
the answer), `request_bytes`, `response_bytes`, and `prompt_tokens`/`completion_tokens` when the
engine reported them. Never the key, the query string, headers or any of the body: the prompt
and the images stay out of the logs. The probes and /metrics are not logged (they are not
requests of a tenant, and would drown the ones that are).

Cost on the request path: one dict and one orjson encode, appended to a buffer that is written
in one write(2) per 50 ms (or 64 KiB): a system call per request costs more than the rest of
the line (docs/benchmarks.md, "Request IDs and access log"). The router flushes on shutdown; a
SIGKILL loses at most the last 50 ms of lines.
"""

from __future__ import annotations

import asyncio
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
# Lines wait at most this long, or until this many bytes are waiting, for one write(2) together.
FLUSH_SECONDS = 0.05
FLUSH_BYTES = 64 * 1024


_second = -1
_prefix = ""


def utc_stamp(wall: float) -> str:
    """ISO 8601 with milliseconds; the date and time part is formatted once per second."""
    global _second, _prefix
    seconds = int(wall)
    if seconds != _second:
        _prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _second = seconds
    return f"{_prefix}.{int((wall - seconds) * 1000):03d}Z"


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
    """Collects access lines and writes them to a file descriptor (standard output unless told
    otherwise) at most `FLUSH_SECONDS` later, in one write(2) per batch, or at once when the
    batch reaches `FLUSH_BYTES`. Without a running event loop (tests, shutdown) every line is
    written at once; `flush()` writes what is left."""

    __slots__ = ("fd", "_buffer", "_pending")

    def __init__(self, fd: int = 1) -> None:
        self.fd = fd
        self._buffer = bytearray()
        self._pending: asyncio.TimerHandle | None = None

    def record(self, request: Any, method: str, path: str) -> None:
        self._buffer += access_line(request, method, path, wall=time.time(), now=time.perf_counter())
        if len(self._buffer) >= FLUSH_BYTES:
            self.flush()
        elif self._pending is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._pending = loop.call_later(FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        data, self._buffer = self._buffer, bytearray()
        view = memoryview(data)
        while view:
            try:
                written = os.write(self.fd, view)
            except OSError:
                return  # a closed log pipe must not fail requests that were already answered
            view = view[written:]
