"""The router against hostile tenants, over real sockets: the server the CLI builds (`main.server_config`,
the guarded httptools protocol, the tenant and metrics sockets) in front of a recording upstream.

Every fetch target is a loopback server that counts its hits.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import socket
from contextlib import asynccontextmanager

import httpx
import pytest
import uvicorn
from PIL import Image
from pixtral_runtime.router.app import create_app
from pixtral_runtime.router.config import parse_config
from pixtral_runtime.router.main import listen_sockets, server_config
from pixtral_runtime.router.settings import RouterSettings

pytestmark = pytest.mark.timeout(60)
KEY = "sk-hardening"
AUTH = {"authorization": f"Bearer {KEY}"}


class Recorder:
    """A raw HTTP/1.1 upstream on 127.0.0.1 that records every request it reads and answers 200."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.hits = 0
        self.server: asyncio.AbstractServer | None = None
        self.url = ""
        self.extra_headers = b""

    async def __aenter__(self) -> Recorder:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.hits += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length) if length else b""
                self.requests.append(head + body)
                answer = b'{"ok": true}'
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s"
                             % (len(answer), self.extra_headers, answer))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@asynccontextmanager
async def router(cfg: dict, **settings):
    settings = {"host": "127.0.0.1", "port": free_port(), "metrics_port": free_port(), **settings}
    router_settings = RouterSettings(config=parse_config(cfg), **settings)
    app = create_app(router_settings)
    server = uvicorn.Server(server_config(app, router_settings, loop="asyncio", log_level="warning"))
    task = asyncio.create_task(server.serve(sockets=listen_sockets(router_settings)))
    for _ in range(500):  # bounded wait for the bind
        if server.started:
            break
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    assert server.started
    base = f"http://127.0.0.1:{router_settings.port}"
    async with httpx.AsyncClient(base_url=base, timeout=20) as client:
        client.app = app
        client.settings = router_settings
        client.metrics_url = f"http://127.0.0.1:{router_settings.metrics_port}/metrics"
        try:
            yield client
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, 10)


def config(backend: str, **extra) -> dict:
    return {"deployment": "t", "backends": {"stable": [backend]}, "apiKeys": {"team-a": KEY},
            "tenancy": {"defaultLimits": {"requestsPerMinute": 0, "maxConcurrent": 0}}, **extra}


def png(size: int = 8) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (9, 9, 9)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def chat(*content) -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, *content]}]}


async def raw(port: int, data: bytes, *, read_timeout: float = 20) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(65536), read_timeout)
    finally:
        writer.close()


# ---- item 1 + 2: what reaches vLLM ---------------------------------------------------------------

SHAPES = [
    lambda url: {"type": "image_url", "image_url": {"url": url}},
    lambda url: {"type": "input_image", "image_url": url},
    lambda url: {"image_url": url},
    lambda url: {"image_url": {"url": url}},
]


async def test_no_image_shape_gets_past_the_limit_or_the_url_policy_to_the_upstream() -> None:
    async with Recorder() as up, Recorder() as fetch_target:
        # The loopback fetch target is on the domain list: refused all the same (not a public address).
        host = "127.0.0.1"
        cfg = config(up.url, admission={"imagesPerPrompt": 1, "allowedImageUrlSchemes": ["data", "http", "https"],
                                        "allowedImageUrlDomains": [host, "localhost"]})
        async with router(cfg) as client:
            target = fetch_target.url
            for make in SHAPES:
                for body in (chat(make(png()), make(png())),  # over the limit
                             chat(make("file:///etc/passwd")),
                             chat(make(f"{target}/cat.png")),
                             chat(make(target.replace(host, "localhost") + "/cat.png")),  # resolves to loopback
                             chat(make("http://example.invalid/x.png"))):  # not on the list
                    r = await client.post("/v1/chat/completions", json=body, headers=AUTH)
                    assert r.status_code == 400, (body, r.text)
                    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
            ok = await client.post("/v1/chat/completions", json=chat(SHAPES[2](png())), headers=AUTH)
            assert ok.status_code == 200
    assert len(up.requests) == 1 and fetch_target.hits == 0


# ---- item 9: isolation ---------------------------------------------------------------------------

async def test_metrics_only_on_the_metrics_port_and_no_backend_address_by_default() -> None:
    async with Recorder() as up, router(config(up.url)) as client:
        r = await client.post("/v1/chat/completions", json=chat(), headers=AUTH)
        assert r.status_code == 200 and "x-pixtral-backend" not in r.headers
        assert up.url.split("//")[1] not in json.dumps(dict(r.headers))
        assert (await client.get("/metrics")).status_code == 404
        metrics = await client.get(client.metrics_url)
        assert metrics.status_code == 200 and "pixtral_router_requests_total" in metrics.text
        # The metrics port serves the probes and the metrics, nothing of the tenants'.
        base = client.metrics_url.rsplit("/", 1)[0]
        assert (await client.post(base + "/v1/chat/completions", json=chat(), headers=AUTH)).status_code == 404
        assert (await client.get(base + "/readyz")).status_code == 200
    async with Recorder() as up, router(config(up.url), debug_headers=True) as client:
        r = await client.post("/v1/chat/completions", json=chat(), headers=AUTH)
        assert r.headers["x-pixtral-backend"] == up.url


# ---- item 6: headers ------------------------------------------------------------------------------

async def test_connection_listed_and_hop_by_hop_headers_are_stripped_both_ways() -> None:
    async with Recorder() as up:
        up.extra_headers = b"connection: keep-alive, x-internal\r\nx-internal: secret\r\nkeep-alive: timeout=5\r\n"
        async with router(config(up.url)) as client:
            r = await client.post("/v1/chat/completions", json=chat(), headers={
                **AUTH, "connection": "keep-alive, x-client-hop", "x-client-hop": "1", "te": "trailers",
                "proxy-authorization": "Basic eA==", "x-kept": "yes"})
            assert r.status_code == 200
            assert "x-internal" not in r.headers and "keep-alive" not in r.headers
    sent = up.requests[0].lower()
    assert b"x-kept: yes" in sent
    for name in (b"x-client-hop", b"\r\nte:", b"proxy-authorization", b"authorization: bearer"):
        assert name not in sent, name


# ---- items 3 + 4: memory budget, deadlines, slot after body -------------------------------------

async def test_bodies_beyond_the_memory_budget_are_refused_and_others_still_served() -> None:
    body_size = 3 * 1024 * 1024
    async with Recorder() as up, router(config(up.url, admission={"maxBodyBytes": 8 * 1024 * 1024}),
                                        body_budget_bytes=10 * 1024 * 1024) as client:
        port = client.settings.port
        held = []
        for _ in range(5):  # 5 x 3 MiB declared, 10 MiB budget: three fit, two do not
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer %s\r\n"
                         b"content-type: application/json\r\ncontent-length: %d\r\n\r\n{" % (KEY.encode(), body_size))
            await writer.drain()
            held.append((reader, writer))
        answers = []
        for reader, _ in held[3:]:
            answers.append(await asyncio.wait_for(reader.read(65536), 10))
        assert all(a.startswith(b"HTTP/1.1 503") and b"server_busy" in a for a in answers), answers
        assert client.app.budget.used == 3 * body_size <= client.app.budget.limit
        # A small request of anyone is still served while the three hold their budget.
        assert (await client.post("/v1/chat/completions", json=chat(), headers=AUTH)).status_code == 200
        for _, writer in held:
            writer.close()
        for _ in range(200):  # bounded: the reservations go as the connections close
            if client.app.budget.used == 0:
                break
            await asyncio.sleep(0.02)
        assert client.app.budget.used == 0 and client.app.budget.peak <= client.app.budget.limit


async def test_a_trickled_body_gets_a_408_and_never_holds_a_concurrency_slot() -> None:
    async with Recorder() as up:
        cfg = config(up.url, tenancy={"defaultLimits": {"requestsPerMinute": 0, "maxConcurrent": 1}})
        async with router(cfg, body_timeout_seconds=1.0) as client:
            reader, writer = await asyncio.open_connection("127.0.0.1", client.settings.port)
            writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer %s\r\n"
                         b"content-length: 100\r\n\r\n{" % KEY.encode())
            await writer.drain()
            # While the body trickles, the tenant's only slot is free for a request that is complete.
            assert (await client.post("/v1/chat/completions", json=chat(), headers=AUTH)).status_code == 200
            answer = await asyncio.wait_for(reader.read(65536), 10)
            writer.close()
            assert answer.startswith(b"HTTP/1.1 408") and b"request_timeout" in answer


async def test_partial_headers_get_a_408_and_oversized_headers_a_431() -> None:
    async with Recorder() as up, router(config(up.url), header_timeout_seconds=0.5, max_header_bytes=8192) as client:
        port = client.settings.port
        answer = await raw(port, b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-slow: ")
        assert answer.startswith(b"HTTP/1.1 408")
        big = b"x-big: " + b"a" * 100_000 + b"\r\n"
        answer = await raw(port, b"GET /healthz HTTP/1.1\r\nhost: x\r\n" + big + b"\r\n")
        assert answer.startswith(b"HTTP/1.1 431") and b"headers_too_large" in answer
        # Many small headers add up as well.
        many = b"".join(b"x-h%d: %s\r\n" % (i, b"v" * 50) for i in range(300))
        answer = await raw(port, b"GET /healthz HTTP/1.1\r\nhost: x\r\n" + many + b"\r\n")
        assert answer.startswith(b"HTTP/1.1 431")
        assert (await client.get("/healthz")).status_code == 200
    assert up.requests == []


async def test_the_request_timeout_covers_the_body_too() -> None:
    async with Recorder() as up:
        cfg = config(up.url, requestTimeoutSeconds=0.5)
        async with router(cfg, body_timeout_seconds=30.0) as client:
            reader, writer = await asyncio.open_connection("127.0.0.1", client.settings.port)
            writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer %s\r\n"
                         b"content-length: 100\r\n\r\n{" % KEY.encode())
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(65536), 10)
            writer.close()
    assert answer.startswith(b"HTTP/1.1 408")
    assert up.requests == []


# ---- item 6: a stale pooled connection with a single backend ------------------------------------

async def test_stale_pooled_connections_do_not_eject_the_only_backend() -> None:
    answered = 0

    async def close_after_each(reader, writer):
        # Answers the first request of a connection with keep-alive, then takes the next one and
        # hangs up without an answer: every pooled connection the router reuses turns out stale.
        nonlocal answered
        try:
            for request in range(2):
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                if request == 0:
                    answered += 1
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(close_after_each, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        async with router(config(url)) as client:
            for _ in range(10):
                r = await client.post("/v1/chat/completions", json=chat(), headers=AUTH)
                assert r.status_code == 200, r.text
            assert client.app.state.pool._ejected_until == {}
            metrics = (await client.get(client.metrics_url)).text
            assert "pixtral_router_upstream_retries_total{" not in metrics  # no other-backend retry either
    finally:
        server.close()
        await server.wait_closed()
    assert answered == 10


# ---- item 10: limits for the deployment, not per replica ---------------------------------------

async def test_two_router_replicas_together_hold_a_tenant_to_its_limit() -> None:
    async with Recorder() as up:
        cfg = config(up.url, tenancy={"defaultLimits": {"requestsPerMinute": 6, "maxConcurrent": 0}})
        async with router(cfg) as first, router(cfg) as second:
            for client in (first, second):
                client.app.state.set_router_replicas(2)  # what each learns from the router Service's endpoints
            codes = []
            for i in range(12):  # the Service spreads requests over both
                r = await (first, second)[i % 2].post("/v1/chat/completions", json=chat(), headers=AUTH)
                codes.append(r.status_code)
            assert codes.count(200) == 6 and codes.count(429) == 6
            metrics = (await first.get(first.metrics_url)).text
            assert "pixtral_router_limit_replicas 2.0" in metrics
    assert len(up.requests) == 6


async def test_read_body_grows_one_buffer_and_counts_the_budget() -> None:
    from pixtral_runtime.router.body import BodyBudget, Reservation, read_body

    chunks = [b"a" * 1000, b"b" * 1000, b"c" * 500]
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]

    async def receive():
        return messages.pop(0)

    budget = BodyBudget(10_000)
    reservation = Reservation(budget)
    body = await read_body(receive, 5000, 2500, reservation)
    assert bytes(body) == b"".join(chunks) and isinstance(body, bytearray)
    assert budget.used == 2500
    reservation.release()
    assert budget.used == 0


def test_per_backend_state_is_pruned_when_backends_leave() -> None:
    app = create_app(RouterSettings(config=parse_config(config("http://127.0.0.1:1"))))
    gone, kept = "http://10.0.0.1:8000", "http://10.0.0.2:8000"
    app.state.set_backends("stable", [gone, kept])
    for backend in (gone, kept):
        app._backend(backend)
        app.state.outstanding[backend] = 0
        app.metrics.backend_started("stable", backend)
        app.metrics.backend_finished("stable", backend)
    app.state.set_backends("stable", [kept])
    assert set(app._backends) == {kept} and set(app.state.outstanding) == {kept}
    assert {b for _, b in app.metrics._hot.in_flight} == {kept}


async def test_keys_never_reach_the_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    async with Recorder() as up, router(config(up.url)) as client:
        for key in (KEY, "sk-wrong-guess"):
            await client.post("/v1/chat/completions", json=chat(), headers={"authorization": f"Bearer {key}"})
    assert caplog.records, "the router logs something (config applied, at least)"
    assert not any(KEY in r.getMessage() or "sk-wrong-guess" in r.getMessage() for r in caplog.records)
