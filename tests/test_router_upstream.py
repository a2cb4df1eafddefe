"""The router's upstream HTTP/1.1 client against raw asyncio servers that misbehave on purpose."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

import pytest
from pixtral_runtime.router.upstream import UpstreamConnectError, UpstreamError, UpstreamPool, authority

pytestmark = pytest.mark.timeout(30)


@asynccontextmanager
async def raw_server(handler):
    """A TCP server on 127.0.0.1 whose handler gets (reader, writer); counts connections."""
    stats = {"connections": 0}

    async def on_connect(reader, writer):
        stats["connections"] += 1
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port, stats
    finally:
        server.close()
        await server.wait_closed()


async def read_request(reader) -> bytes | None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + (await reader.readexactly(length) if length else b"")


def response(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def keep_alive_handler(reader, writer):
    while True:
        try:
            await read_request(reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        writer.write(response(b'{"ok": true}'))
        await writer.drain()


async def test_keep_alive_reuses_one_connection() -> None:
    async with raw_server(keep_alive_handler) as (port, stats):
        pool = UpstreamPool()
        for _ in range(5):
            r = await pool.request("127.0.0.1", port, b"POST", b"/v1/chat/completions", [], b"{}")
            assert r.status == 200 and await r.read() == b'{"ok": true}'
            r.release()
        assert stats["connections"] == 1
        pool.close()


async def test_request_head_carries_host_length_and_forwarded_headers() -> None:
    seen: list[bytes] = []

    async def recording_handler(reader, writer):
        seen.append(await read_request(reader))
        writer.write(response(b"{}"))
        await writer.drain()

    async with raw_server(recording_handler) as (port, _):
        pool = UpstreamPool()
        r = await pool.request("127.0.0.1", port, b"POST", b"/v1/completions?x=1",
                               [(b"content-type", b"application/json")], b'{"a": 1}')
        await r.read()
        r.release()
        pool.close()
    head, _, body = seen[0].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/completions?x=1 HTTP/1.1"
    assert set(lines[1:]) == {f"host: 127.0.0.1:{port}".encode(), b"content-type: application/json",
                              b"content-length: 8"}
    assert body == b'{"a": 1}'


def test_host_header_brackets_ipv6_literals() -> None:
    assert authority("10.1.2.3", 8000) == b"10.1.2.3:8000"
    assert authority("fd00::12", 8000) == b"[fd00::12]:8000"


async def test_chunked_body_is_decoded_and_streamed() -> None:
    async def chunked(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-type: text/event-stream\r\n\r\n")
        for part in (b"data: 1\n\n", b"data: 2\n\n"):
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            await writer.drain()
            await asyncio.sleep(0.05)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.2)

    async with raw_server(chunked) as (port, _):
        pool = UpstreamPool()
        r = await pool.request("127.0.0.1", port, b"POST", b"/", [], b"{}")
        assert r.content_length is None
        assert [c async for c in r.chunks()] == [b"data: 1\n\n", b"data: 2\n\n"]
        r.release()
        pool.close()


async def test_connection_close_response_is_not_pooled() -> None:
    async def close_after(reader, writer):
        await read_request(reader)
        writer.write(response(b"x", b"connection: close\r\n"))
        await writer.drain()

    async with raw_server(close_after) as (port, stats):
        pool = UpstreamPool()
        for _ in range(3):
            r = await pool.request("127.0.0.1", port, b"POST", b"/", [], b"{}")
            assert await r.read() == b"x"
            r.release()
        assert stats["connections"] == 3
        pool.close()


async def test_refused_connection_is_a_connect_error() -> None:
    async with raw_server(keep_alive_handler) as (port, _):
        pass  # closed again: nothing listens on `port` now
    with pytest.raises(UpstreamConnectError, match="failed"):
        await UpstreamPool().request("127.0.0.1", port, b"POST", b"/", [], b"{}")


async def test_close_without_answer_on_a_fresh_connection_is_not_retryable() -> None:
    async def hang_up(reader, writer):
        await read_request(reader)  # took the request, then died

    async with raw_server(hang_up) as (port, _):
        with pytest.raises(UpstreamError) as info:
            await UpstreamPool().request("127.0.0.1", port, b"POST", b"/", [], b"{}")
        assert not isinstance(info.value, UpstreamConnectError)


async def test_stale_pooled_connection_is_retried_on_a_fresh_connection_to_the_same_backend() -> None:
    requests = 0

    async def one_then_drop(reader, writer):
        nonlocal requests
        await read_request(reader)
        requests += 1
        writer.write(response(b"answer %d" % requests))
        await writer.drain()
        try:
            await read_request(reader)  # the reused connection's request is read and dropped
        except (asyncio.IncompleteReadError, ConnectionError):
            pass

    async with raw_server(one_then_drop) as (port, stats):
        pool = UpstreamPool()
        r = await pool.request("127.0.0.1", port, b"POST", b"/", [], b"{}")
        assert await r.read() == b"answer 1"
        r.release()
        # Not a connect error (which would eject a healthy backend): answered on a new connection.
        r = await pool.request("127.0.0.1", port, b"POST", b"/", [], b"{}")
        assert await r.read() == b"answer 2"
        r.release()
        assert stats["connections"] == 2
        pool.close()


async def test_stale_connection_and_a_refused_fresh_one_is_a_connect_error() -> None:
    server = await asyncio.start_server(keep_alive_handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = UpstreamPool()
    r = await pool.request("127.0.0.1", port, b"POST", b"/", [], b"{}")
    await r.read()
    r.release()
    server.close()
    await server.wait_closed()
    idle = pool._idle[("127.0.0.1", port)][0]
    idle.close()  # the pooled connection is dead, and nothing listens any more
    idle.closed = False  # ... but the pool has not noticed yet
    with pytest.raises(UpstreamConnectError):
        await pool.request("127.0.0.1", port, b"POST", b"/", [], b"{}")
    pool.close()


async def test_head_answer_has_no_body_and_its_connection_is_not_reused() -> None:
    async def head_handler(reader, writer):
        await read_request(reader)
        # Content-Length of the body a GET would have; no body follows.
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(5)

    async with raw_server(head_handler) as (port, stats):
        pool = UpstreamPool()
        r = await asyncio.wait_for(pool.request("127.0.0.1", port, b"HEAD", b"/v1/models", [], b""), 2)
        assert r.status == 200 and r.content_length == 1234
        assert await asyncio.wait_for(r.read(), 2) == b""
        r.release()
        assert not pool._idle.get(("127.0.0.1", port))
        pool.close()


async def test_informational_answers_are_skipped() -> None:
    async def early_hints(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n"
                     b"HTTP/1.1 100 Continue\r\n\r\n" + response(b"final", b"x-real: 1\r\n"))
        await writer.drain()

    async with raw_server(early_hints) as (port, _):
        pool = UpstreamPool()
        r = await pool.request("127.0.0.1", port, b"POST", b"/", [], b"{}")
        assert r.status == 200 and await r.read() == b"final"
        assert (b"x-real", b"1") in r.headers and not any(k == b"link" for k, _ in r.headers)
        pool.close()


async def test_forget_drops_the_state_of_backends_that_left() -> None:
    async with raw_server(keep_alive_handler) as (port, _):
        pool = UpstreamPool()
        r = await pool.request("127.0.0.1", port, b"POST", b"/", [], b"{}")
        await r.read()
        r.release()
        conn = pool._idle[("127.0.0.1", port)][0]
        pool.forget(keep={("127.0.0.1", 1)})
        assert pool._idle == {} and pool._host_lines == {} and conn.closed
        pool.close()


async def test_unread_body_closes_the_connection() -> None:
    async with raw_server(keep_alive_handler) as (port, stats):
        pool = UpstreamPool()
        r = await pool.request("127.0.0.1", port, b"POST", b"/", [], b"{}")
        r.release()  # body never read: the connection must not go back to the pool
        r = await pool.request("127.0.0.1", port, b"POST", b"/", [], b"{}")
        await r.read()
        r.release()
        assert stats["connections"] == 2
        pool.close()


async def test_invalid_response_is_an_upstream_error() -> None:
    async def garbage(reader, writer):
        await read_request(reader)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.2)

    async with raw_server(garbage) as (port, _):
        with pytest.raises(UpstreamError, match="invalid HTTP response"):
            await UpstreamPool().request("127.0.0.1", port, b"POST", b"/", [], b"{}")
