"""One timer per request: the request deadline, the body deadline, and a watch for the client leaving.

The timer covers the whole request, from the first line of `_proxy` to the last byte relayed:
while the body is read it fires at the body deadline (or the request deadline, if sooner) and the
request ends with a 408; once the body is in (`body_received`) it fires after
`WATCH_AFTER_SECONDS`, starts a task watching for the client to leave and re-arms itself for the
request deadline. Most requests end before it fires, and a cancelled timer costs far less than a
task and `asyncio.timeout()` per request (docs/router.md, "Performance notes").
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

Receive = Callable[[], Awaitable[dict[str, Any]]]

# A request still running after this long gets a task watching for its client to leave.
WATCH_AFTER_SECONDS = 0.05


class RequestInfo:
    """What the error path, the metrics and the access log need to know about one request."""

    __slots__ = ("tenant", "track", "response_started", "response_done", "client_gone", "request_id", "started",
                 "backend", "status", "request_bytes", "response_bytes", "tap", "images", "pixels", "span")

    def __init__(self, started: float = 0.0) -> None:
        self.tenant = "-"
        self.track = "-"
        self.response_started = False
        self.response_done = False
        self.client_gone = False
        self.request_id: bytes | None = None
        self.started = started
        self.backend: str | None = None
        self.status = 0
        self.request_bytes = 0
        self.response_bytes = 0
        self.tap = None
        # What admission counted, for the trace (tracing.request_attributes).
        self.images = 0
        self.pixels = 0
        # The request's tracing span (tracing.py), None while tracing is off.
        self.span = None


class Guard:
    __slots__ = ("task", "request", "receive", "cancelling", "expired", "reading_body", "watcher",
                 "deadline", "timer", "loop")

    def __init__(self, task: asyncio.Task, request: RequestInfo, receive: Receive, *, deadline: float,
                 body_deadline: float) -> None:
        self.task = task
        self.request = request
        self.receive = receive
        self.cancelling = task.cancelling()
        self.expired = False
        self.reading_body = True
        self.watcher: asyncio.Task | None = None
        self.loop = asyncio.get_running_loop()
        self.deadline = deadline
        self.timer = self.loop.call_at(min(deadline, body_deadline), self._expire)

    def body_received(self) -> None:
        self.reading_body = False
        self.timer.cancel()
        self.timer = self.loop.call_at(min(self.deadline, self.loop.time() + WATCH_AFTER_SECONDS), self._fire)

    def _expire(self) -> None:
        self.expired = True
        self.task.cancel()

    def _fire(self) -> None:
        if self.watcher is None:
            self.watcher = asyncio.ensure_future(self._watch())
        if self.loop.time() < self.deadline:
            self.timer = self.loop.call_at(self.deadline, self._fire)
        else:
            self._expire()

    async def _watch(self) -> None:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                if not self.request.response_done:
                    self.request.client_gone = True
                    self.task.cancel()
                return

    def ours(self) -> bool:
        """After a CancelledError: whether this guard's deadline caused it (and it is now undone)."""
        return self.expired and self.task.uncancel() <= self.cancelling

    def stop(self) -> None:
        self.timer.cancel()
        if self.watcher is not None:
            self.watcher.cancel()
