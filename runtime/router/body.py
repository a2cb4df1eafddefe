"""Reading request bodies under a per-process memory budget.

Bodies are buffered whole (admission must see all of a chat request before anything is sent).
`BodyBudget` caps the bytes all requests of the process hold at once; beyond it a request gets a
503 `server_busy` at once rather than pushing the pod towards its memory limit, where an OOM kill
would cut every tenant's streams. A declared Content-Length is reserved before the first byte is
read; a chunked upload reserves as it arrives.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from .errors import BodyTooLarge, ServerBusy

Receive = Callable[[], Awaitable[dict[str, Any]]]

# Default without a memory limit to derive it from (docs/router.md, "Memory").
DEFAULT_BUDGET_BYTES = 256 * 1024 * 1024
# A buffered body costs more than its size while it is admitted: the parsed JSON holds a copy of
# its strings, and a data URL's decoded prefix another small one. A quarter of the memory limit
# leaves the rest for those copies, the process itself and the streams.
MEMORY_LIMIT_SHARE = 0.25


def budget_for(memory_limit_bytes: int | None) -> int:
    return int(memory_limit_bytes * MEMORY_LIMIT_SHARE) if memory_limit_bytes else DEFAULT_BUDGET_BYTES


class ClientDisconnected(Exception):
    """The client closed the connection before its request body arrived."""


class BodyBudget:
    def __init__(self, limit_bytes: int) -> None:
        self.limit = limit_bytes
        self.used = 0
        self.peak = 0

    def take(self, size: int) -> None:
        if self.used + size > self.limit:
            raise ServerBusy(
                "The router is holding as many request bodies as its memory allows; retry in a moment."
            )
        self.used += size
        if self.used > self.peak:
            self.peak = self.used

    def give(self, size: int) -> None:
        self.used -= size


class Reservation:
    """The bytes one request holds in the budget; `release()` once its body is dropped."""

    __slots__ = ("budget", "held")

    def __init__(self, budget: BodyBudget) -> None:
        self.budget = budget
        self.held = 0

    def grow(self, size: int) -> None:
        if size > self.held:
            self.budget.take(size - self.held)
            self.held = size

    def release(self) -> None:
        self.budget.give(self.held)
        self.held = 0


def body_too_large(received: int, limit: int) -> BodyTooLarge:
    return BodyTooLarge(f"Request body exceeds the limit of {limit} bytes (received at least {received}).")


async def read_body(receive: Receive, limit: int, declared: int | None, reservation: Reservation) -> bytes | bytearray:
    """The whole body (at most `limit` bytes), counted against the budget as it arrives.

    A body in several chunks grows one bytearray chunk by chunk: joining a list at the end is one
    copy of the whole body on the event loop, and a bytearray preallocated to a declared length is
    zero-filled at once (either stalls every other stream for tens of ms at 50 MB). Grown in place,
    large buffers are extended by the allocator without copies (mremap) and their pages are
    touched a chunk at a time.
    """
    if declared is not None:
        reservation.grow(declared)
    first = await receive()
    if first["type"] == "http.disconnect":
        raise ClientDisconnected
    chunk = first.get("body", b"")
    if len(chunk) > limit:
        raise body_too_large(len(chunk), limit)
    if not first.get("more_body", False):
        return chunk
    buffer = bytearray(chunk)
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        size = len(buffer) + len(chunk)
        if size > limit:
            raise body_too_large(size, limit)
        reservation.grow(size)
        buffer += chunk
        more = message.get("more_body", False)
    return buffer
