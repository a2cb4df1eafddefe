"""A lean HTTP/1.1 client for the router's upstream calls: asyncio protocol + httptools parser.

Why not aiohttp or httpx: on the router's hot path the client is most of the cost. Measured on
the benchmark machine (docs/router.md, "Performance notes"): about 70 us of CPU per request in
uvicorn itself, ~500 us for a minimal proxy with aiohttp's client and several ms with httpx's. The upstreams are
our own runtimes (vLLM behind uvicorn) on plain HTTP/1.1, so the client needs only: a keep-alive
pool per backend, Content-Length and chunked bodies (httptools decodes both), streaming with
backpressure, HEAD and 1xx answers, and a clear split between "could not connect" (safe to retry
on another pod) and "failed after sending" (not retried). A pooled connection the backend closed
while it sat idle is retried once on a fresh connection to the same backend: it says nothing
about the backend's health.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator

import httptools


class UpstreamError(Exception):
    """The upstream failed after the request may have been sent (not retried)."""


class UpstreamConnectError(UpstreamError):
    """No connection could be opened: the backend never saw the request (safe to retry elsewhere)."""


class _StaleConnection(UpstreamError):
    """A pooled connection was closed by the backend before any byte of the answer."""


# Stop reading from the backend while this much is buffered and not yet relayed to the client.
_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024


class _Connection(asyncio.Protocol):
    __slots__ = (
        "transport", "parser", "status", "headers", "chunked", "content_length", "headers_done", "complete",
        "closed", "error", "_waiter", "_body", "_buffered", "_paused", "reused", "received_any", "idle_since",
        "keep_alive", "head", "informational",
    )

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self.head = False
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunked = False
        self.content_length: int | None = None
        self.headers_done = False
        self.complete = False
        self.error: Exception | None = None
        self.received_any = False
        self.keep_alive = True
        self.informational = False
        self._waiter: asyncio.Future | None = None
        self._body: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._paused = False

    # -- asyncio.Protocol --
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"invalid HTTP response from upstream: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.headers_done and not self.complete and self.content_length is None and not self.chunked:
            self.complete = True  # a body delimited by the end of the connection
            self._wake()
        elif not self.complete:
            if not self.received_any and self.reused:
                self._fail(_StaleConnection("pooled connection was closed by the backend"))
            else:
                self._fail(UpstreamError(f"backend closed the connection{': ' + str(exc) if exc else ''}"))

    # -- httptools callbacks --
    def on_message_begin(self) -> None:
        if self.informational:  # the real answer follows a 1xx: start its headers afresh
            self.informational = False
            self.headers = []
            self.chunked = False
            self.content_length = None

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-length":
            self.content_length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            self.chunked = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # 100 Continue, 103 Early Hints: informational, the answer comes after it.
            self.informational = True
            return
        self.status = status
        self.keep_alive = self.parser.should_keep_alive()
        self.headers_done = True
        if self.head:
            # An answer to HEAD has no body whatever its Content-Length says; the parser does not
            # know the method, so the connection is not reused after it.
            self.complete = True
            self.keep_alive = False
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self.head:
            return
        self._body.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.informational:
            return
        self.complete = True
        self._wake()

    # -- used by the client --
    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: Exception) -> None:
        if self.error is None:
            self.error = exc
        self._wake()

    async def _wait(self) -> None:
        if self.error is not None:
            raise self.error
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def take_body(self) -> bytes:
        data = b"".join(self._body) if len(self._body) != 1 else self._body[0]
        self._body.clear()
        self._buffered = 0
        return data

    def take_chunk(self) -> bytes | None:
        if not self._body:
            return None
        chunk = self._body.popleft()
        self._buffered -= len(chunk)
        if self._paused and self._buffered < _LOW_WATER and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return chunk


class UpstreamResponse:
    """A response whose body is read with `read()` or iterated with `chunks()`, then `release()`d."""

    __slots__ = ("_conn", "_pool", "_key", "status", "headers", "content_length", "_done")

    def __init__(self, conn: _Connection, pool: UpstreamPool, key: tuple[str, int]) -> None:
        self._conn = conn
        self._pool = pool
        self._key = key
        self.status = conn.status
        self.headers = conn.headers
        self.content_length = None if conn.chunked else conn.content_length
        self._done = False

    async def read(self) -> bytes:
        conn = self._conn
        while not conn.complete:
            await conn._wait()
        self._done = True
        return conn.take_body()

    async def chunks(self) -> AsyncIterator[bytes]:
        conn = self._conn
        while True:
            chunk = conn.take_chunk()
            if chunk is not None:
                yield chunk
                continue
            if conn.complete:
                self._done = True
                return
            await conn._wait()

    def release(self) -> None:
        """Back to the pool when the body was read to the end; closed otherwise (aborts the backend's work)."""
        conn = self._conn
        if self._done and conn.complete and conn.keep_alive and not conn.closed and conn.error is None:
            self._pool._put(self._key, conn)
        else:
            conn.close()


def authority(host: str, port: int) -> bytes:
    """The Host header value: IPv6 literals go in brackets (RFC 9110 4.2.1)."""
    return (f"[{host}]:{port}" if ":" in host else f"{host}:{port}").encode()


class UpstreamPool:
    """Keep-alive connections per (host, port); idle ones older than `keepalive_seconds` are closed."""

    def __init__(self, *, keepalive_seconds: float = 3.0, connect_timeout: float = 5.0,
                 max_idle_per_backend: int = 256) -> None:
        self.keepalive_seconds = keepalive_seconds
        self.connect_timeout = connect_timeout
        self.max_idle_per_backend = max_idle_per_backend
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._host_lines: dict[tuple[str, int], bytes] = {}
        self._closed = False

    def _put(self, key: tuple[str, int], conn: _Connection) -> None:
        idle = self._idle.setdefault(key, [])
        if self._closed or len(idle) >= self.max_idle_per_backend:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)

    async def _acquire(self, key: tuple[str, int], *, fresh: bool = False) -> _Connection:
        idle = None if fresh else self._idle.get(key)
        if idle:
            now = time.monotonic()
            while idle:
                conn = idle.pop()  # most recent first: the least likely to be closed by the backend
                if conn.closed or now - conn.idle_since > self.keepalive_seconds:
                    conn.close()
                    continue
                conn._reset()
                conn.reused = True
                return conn
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(_Connection, key[0], key[1])
        except TimeoutError:
            raise UpstreamConnectError(f"connect to {key[0]}:{key[1]} timed out after {self.connect_timeout:g}s") from None
        except OSError as exc:
            raise UpstreamConnectError(f"connect to {key[0]}:{key[1]} failed: {exc.strerror or exc}") from None
        return conn

    async def request(self, host: str, port: int, method: bytes, target: bytes,
                      headers: list[tuple[bytes, bytes]], body: bytes) -> UpstreamResponse:
        """Send a request and wait for the response headers."""
        key = (host, port)
        host_line = self._host_lines.get(key)
        if host_line is None:
            host_line = self._host_lines[key] = b" HTTP/1.1\r\nhost: " + authority(host, port) + b"\r\n"
        head = [method, b" ", target, host_line]
        for name, value in headers:
            head += (name, b": ", value, b"\r\n")
        if body or method not in (b"GET", b"HEAD"):
            head += (b"content-length: ", str(len(body)).encode(), b"\r\n")
        head.append(b"\r\n")
        head_bytes = b"".join(head)
        conn = await self._acquire(key)
        try:
            return await self._send(conn, key, method, head_bytes, body)
        except _StaleConnection:
            # The backend closed an idle keep-alive connection as we took it: it never read the
            # request. Once more on a new connection; if that cannot be opened, it is a connect failure.
            conn = await self._acquire(key, fresh=True)
            try:
                return await self._send(conn, key, method, head_bytes, body)
            except _StaleConnection as exc:  # cannot happen on a fresh connection; reported plainly
                raise UpstreamError(str(exc)) from None

    async def _send(self, conn: _Connection, key: tuple[str, int], method: bytes, head: bytes,
                    body: bytes) -> UpstreamResponse:
        conn.head = method == b"HEAD"
        try:
            transport = conn.transport
            assert transport is not None
            # Head and body in two writes: joining them would copy a body of up to hundreds of MB.
            if body:
                transport.write(head)
                transport.write(body)
            else:
                transport.write(head)
            while not conn.headers_done:
                await conn._wait()
        except BaseException:
            conn.close()
            raise
        return UpstreamResponse(conn, self, key)

    def forget(self, keep: set[tuple[str, int]]) -> None:
        """Drop what the pool holds for backends not in `keep` (they left the EndpointSlices)."""
        for key in [k for k in self._idle if k not in keep]:
            for conn in self._idle.pop(key):
                conn.close()
        for key in [k for k in self._host_lines if k not in keep]:
            del self._host_lines[key]

    def close(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
