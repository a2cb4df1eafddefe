"""The router app over real sockets: a real uvicorn router in front of a small real upstream (Starlette).

Covers what only shows end to end: retry on a refused connection, chunk-by-chunk streaming, a
client disconnect cancelling the upstream request, holding requests while no backend is ready,
refusals that never reach the upstream, and the metrics they leave behind.
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
from pixtral_runtime.router.settings import RouterSettings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

pytestmark = pytest.mark.timeout(60)
KEY = "sk-test-key"
AUTH = {"authorization": f"Bearer {KEY}"}


class Upstream:
    """A tiny OpenAI-shaped backend that records what reached it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.requests: list[dict] = []
        self.release_stream = asyncio.Event()
        self.stream_cancelled = asyncio.Event()
        self.app = Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"]),
                                     Route("/v1/completions", self.chat, methods=["POST"])])

    async def chat(self, request: Request):
        body = await request.json()
        self.requests.append({"body": body, "headers": dict(request.headers)})
        mode = body.get("mode")
        if mode == "gated-stream":
            # The second chunk waits for the test: a buffering router would deadlock here.
            async def gated():
                yield b"data: first\n\n"
                await asyncio.wait_for(self.release_stream.wait(), 10)
                yield b"data: second\n\n"
                yield b"data: [DONE]\n\n"
            return StreamingResponse(gated(), media_type="text/event-stream")
        if mode == "endless-stream":
            async def endless():
                try:
                    for i in range(600):  # bounded: 30 s at most
                        yield f"data: {i}\n\n".encode()
                        await asyncio.sleep(0.05)
                finally:
                    self.stream_cancelled.set()
            return StreamingResponse(endless(), media_type="text/event-stream")
        if mode == "slow":
            await asyncio.sleep(1.5)
        if mode == "fail":
            return JSONResponse({"error": {"message": "engine overloaded"}}, status_code=503)
        return JSONResponse({"served_by": self.name, "object": "chat.completion"})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@asynccontextmanager
async def serve(app):
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning",
                                           lifespan="on", loop="asyncio"))
    task = asyncio.create_task(server.serve())
    for _ in range(500):  # bounded wait for the bind
        if server.started:
            break
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    assert server.started
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


def config(backends: dict, **extra) -> dict:
    # team-a may pin a track with x-pixtral-track (the tests of the override use it).
    return {"deployment": "t", "servedModelName": "tiny", "backends": backends, "apiKeys": {"team-a": KEY},
            "tenancy": {"defaultLimits": {"requestsPerMinute": 0, "maxConcurrent": 0},
                        "tenants": {"team-a": {"trackOverride": True}}},
            "admission": {"imagesPerPrompt": 1}, **extra}


@asynccontextmanager
async def router(cfg: dict, **settings):
    # x-pixtral-backend on, for the assertions on which backend served; off by default in the router.
    settings.setdefault("debug_headers", True)
    app = create_app(RouterSettings(config=parse_config(cfg), **settings))
    async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=20) as client:
        client.app = app
        yield client


def metric(text: str, name: str, **labels) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


def chat_body(**extra) -> dict:
    return {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], **extra}


async def test_proxy_reports_track_and_backend_and_strips_the_key() -> None:
    up = Upstream("a")
    async with serve(up.app) as up_url, router(config({"stable": [up_url]})) as client:
        r = await client.post("/v1/chat/completions", json=chat_body(), headers=AUTH)
        assert r.status_code == 200 and r.json()["served_by"] == "a"
        assert r.headers["x-pixtral-track"] == "stable" and r.headers["x-pixtral-backend"] == up_url
        assert "authorization" not in up.requests[0]["headers"]
        models = await client.get("/v1/models", headers=AUTH)
        assert models.json()["data"][0]["id"] == "tiny"
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).status_code == 200
        m = (await client.get("/metrics")).text
        assert metric(m, "pixtral_router_requests_total", tenant="team-a", track="stable", code="200") == 1
        assert metric(m, "pixtral_router_request_duration_seconds_count", track="stable") == 1
        assert metric(m, "pixtral_router_time_to_first_byte_seconds_count", track="stable") == 1


async def test_auth_and_rate_limit_over_http() -> None:
    up = Upstream("a")
    cfg = config({"stable": []}, tenancy={"tenants": {"team-a": {"requestsPerMinute": 2, "maxConcurrent": 0}}})
    cfg["backends"] = None
    async with serve(up.app) as up_url:
        cfg["backends"] = {"stable": [up_url]}
        async with router(cfg) as client:
            r = await client.post("/v1/chat/completions", json=chat_body())
            assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
            r = await client.post("/v1/chat/completions", json=chat_body(), headers={"authorization": "Bearer x"})
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
            for _ in range(2):
                assert (await client.post("/v1/chat/completions", json=chat_body(), headers=AUTH)).status_code == 200
            r = await client.post("/v1/chat/completions", json=chat_body(), headers=AUTH)
            assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
            assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert len(up.requests) == 2


async def test_concurrency_limit_over_http() -> None:
    up = Upstream("a")
    async with serve(up.app) as up_url:
        cfg = config({"stable": [up_url]}, tenancy={"defaultLimits": {"requestsPerMinute": 0, "maxConcurrent": 1}})
        async with router(cfg) as client:
            async with client.stream("POST", "/v1/chat/completions", json=chat_body(mode="gated-stream"),
                                     headers=AUTH) as held:
                assert held.status_code == 200
                r = await client.post("/v1/chat/completions", json=chat_body(), headers=AUTH)
                assert r.status_code == 429 and r.json()["error"]["code"] == "concurrency_limit_exceeded"
                up.release_stream.set()
                await held.aread()
            assert (await client.post("/v1/chat/completions", json=chat_body(), headers=AUTH)).status_code == 200


async def test_retry_on_another_backend_when_connect_fails() -> None:
    up = Upstream("alive")
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    async with serve(up.app) as up_url, router(config({"stable": [dead], "canary": [up_url]})) as client:
        r = await client.post("/v1/chat/completions", json=chat_body(), headers=AUTH)
        assert r.status_code == 200 and r.headers["x-pixtral-backend"] == up_url
        m = (await client.get("/metrics")).text
        assert metric(m, "pixtral_router_upstream_retries_total", track="stable") == 1
        # The refused backend is skipped for a while: the next request goes straight to the live one.
        r = await client.post("/v1/chat/completions", json=chat_body(), headers=AUTH)
        assert r.status_code == 200
        m = (await client.get("/metrics")).text
        assert metric(m, "pixtral_router_upstream_retries_total") == 1


async def test_all_backends_refusing_is_502() -> None:
    dead1, dead2 = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
    async with router(config({"stable": [dead1, dead2]})) as client:
        r = await client.post("/v1/chat/completions", json=chat_body(), headers=AUTH)
        assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_unreachable"


async def assert_one_client_closed_request(client: httpx.AsyncClient) -> None:
    """Exactly one 499 is recorded (the router notes it right after the cancel) and nothing is left in flight."""
    m = ""
    for _ in range(100):  # bounded: 5 s
        m = (await client.get("/metrics")).text
        if metric(m, "pixtral_router_requests_total", code="499"):
            break
        await asyncio.sleep(0.05)
    assert metric(m, "pixtral_router_requests_total", code="499") == 1
    assert metric(m, "pixtral_router_backend_in_flight") == 0


async def test_streaming_is_passed_through_chunk_by_chunk() -> None:
    up = Upstream("a")
    async with serve(up.app) as up_url, router(config({"stable": [up_url]})) as client:
        async with client.stream("POST", "/v1/chat/completions", json=chat_body(mode="gated-stream"),
                                 headers=AUTH) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            chunks = r.aiter_raw()
            first = await asyncio.wait_for(chunks.__anext__(), 5)
            assert first == b"data: first\n\n"  # arrived while the upstream was still generating
            up.release_stream.set()
            rest = b"".join([c async for c in chunks])
        assert rest == b"data: second\n\ndata: [DONE]\n\n"


async def test_client_disconnect_cancels_the_upstream_request() -> None:
    up = Upstream("a")
    async with serve(up.app) as up_url, router(config({"stable": [up_url]})) as client:
        async with client.stream("POST", "/v1/chat/completions", json=chat_body(mode="endless-stream"),
                                 headers=AUTH) as r:
            await asyncio.wait_for(r.aiter_raw().__anext__(), 5)
        # Leaving the block closed the connection mid-stream.
        await asyncio.wait_for(up.stream_cancelled.wait(), 10)
        await assert_one_client_closed_request(client)


async def test_client_leaving_a_slow_non_streaming_request_is_recorded_as_499() -> None:
    up = Upstream("a")
    async with serve(up.app) as up_url, router(config({"stable": [up_url]})) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post("/v1/chat/completions", json=chat_body(mode="slow"), headers=AUTH, timeout=0.3)
        await assert_one_client_closed_request(client)  # the watch starts 50 ms into the request


async def test_a_stream_running_past_the_request_timeout_is_cut_and_counted_as_504() -> None:
    up = Upstream("a")
    async with serve(up.app) as up_url, router(config({"stable": [up_url]}, requestTimeoutSeconds=0.5)) as client:
        async with client.stream("POST", "/v1/chat/completions", json=chat_body(mode="endless-stream"),
                                 headers=AUTH) as r:
            assert r.status_code == 200
            with pytest.raises(httpx.RemoteProtocolError):  # the chunked body ends without its last chunk
                async for _ in r.aiter_raw():
                    pass
        await asyncio.wait_for(up.stream_cancelled.wait(), 10)
        m = (await client.get("/metrics")).text
        assert metric(m, "pixtral_router_requests_total", track="stable", code="504") == 1
        assert metric(m, "pixtral_router_backend_in_flight") == 0
        # The router still serves normally afterwards.
        r = await client.post("/v1/chat/completions", json=chat_body(), headers=AUTH)
        assert r.status_code == 200


async def test_refusals_never_reach_the_upstream() -> None:
    up = Upstream("a")
    img = io.BytesIO()
    Image.new("RGB", (4, 4)).save(img, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(img.getvalue()).decode()
    two_images = {"model": "tiny", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}, {"type": "image_url", "image_url": url}]}]}
    cfg = config({"stable": []}, admission={"imagesPerPrompt": 1, "maxBodyBytes": 2000})
    async with serve(up.app) as up_url:
        cfg["backends"] = {"stable": [up_url]}
        async with router(cfg) as client:
            r = await client.post("/v1/chat/completions", json=two_images, headers=AUTH)
            assert r.status_code == 400 and r.json()["error"]["code"] == "too_many_images"
            r = await client.post("/v1/chat/completions", content=b"{oops", headers=AUTH)
            assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
            r = await client.post("/v1/chat/completions", content=b"x" * 5000, headers=AUTH)
            assert r.status_code == 413
            # Without Content-Length (chunked upload) the streamed size is what counts.
            async def chunked():
                for _ in range(10):
                    yield b"x" * 500
            r = await client.post("/v1/chat/completions", content=chunked(), headers=AUTH)
            assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
            r = await client.post("/v1/chat/completions", json=chat_body(), headers={**AUTH, "x-pixtral-track": "x"})
            assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_track"
            r = await client.get("/v1/chat/completions", headers=AUTH)
            assert r.status_code == 405
            assert (await client.get("/nope")).status_code == 404
            m = (await client.get("/metrics")).text
            assert metric(m, "pixtral_router_admission_rejections_total", reason="too_many_images") == 1
            assert metric(m, "pixtral_router_admission_rejections_total", reason="body_too_large") == 2
            # One image is fine and does pass.
            one = {"model": "tiny", "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": url}}]}]}
            assert (await client.post("/v1/chat/completions", json=one, headers=AUTH)).status_code == 200
    assert len(up.requests) == 1


async def test_requests_are_held_while_no_backend_is_ready_then_served() -> None:
    up = Upstream("late")
    async with serve(up.app) as up_url, router(config({"stable": []}, pendingTimeoutSeconds=10)) as client:
        pending = asyncio.create_task(client.post("/v1/chat/completions", json=chat_body(), headers=AUTH))
        m = ""
        for _ in range(200):  # bounded wait until the router holds the request
            m = (await client.get("/metrics")).text
            if metric(m, "pixtral_router_pending_requests", deployment="t") == 1:
                break
            await asyncio.sleep(0.02)
        # Counted for the track it was routed to; the other track's series is there, at 0.
        assert metric(m, "pixtral_router_pending_requests", deployment="t", track="stable") == 1
        assert metric(m, "pixtral_router_pending_requests", deployment="t", track="canary") == 0
        assert 'pixtral_router_pending_requests{deployment="t",track="canary"} 0.0' in m
        assert (await client.get("/readyz")).status_code == 200  # ready with no backend: it holds requests
        client.app.state.set_backends("stable", [up_url])  # what discovery does when a pod turns ready
        r = await asyncio.wait_for(pending, 10)
        assert r.status_code == 200 and r.json()["served_by"] == "late"
        m = (await client.get("/metrics")).text
        assert metric(m, "pixtral_router_pending_requests", deployment="t") == 0


async def test_requests_for_a_track_without_backends_count_as_its_fallback_while_served() -> None:
    """A canary at zero replicas: its requests go to stable and show as the canary's wake-up signal."""
    up = Upstream("stable")
    async with serve(up.app) as up_url, router(config({"stable": [up_url], "canary": []})) as client:
        async with client.stream("POST", "/v1/chat/completions", json=chat_body(mode="gated-stream"),
                                 headers={**AUTH, "x-pixtral-track": "canary"}) as r:
            assert r.headers["x-pixtral-track"] == "stable"  # served by the track that has a backend
            chunks = r.aiter_raw()
            await asyncio.wait_for(chunks.__anext__(), 5)
            m = (await client.get("/metrics")).text
            assert metric(m, "pixtral_router_fallback_requests", deployment="t", track="canary") == 1
            assert metric(m, "pixtral_router_fallback_requests", deployment="t", track="stable") == 0
            assert metric(m, "pixtral_router_pending_requests", deployment="t") == 0
            up.release_stream.set()
            async for _ in chunks:
                pass
        m = (await client.get("/metrics")).text
        assert metric(m, "pixtral_router_fallback_requests", deployment="t", track="canary") == 0
        # A request routed to stable and served there is no fallback.
        r = await client.post("/v1/chat/completions", json=chat_body(), headers=AUTH)
        assert r.status_code == 200 and r.headers["x-pixtral-track"] == "stable"
        m = (await client.get("/metrics")).text
        assert metric(m, "pixtral_router_fallback_requests", deployment="t") == 0


async def test_held_requests_time_out_with_503() -> None:
    async with router(config({"stable": []}, pendingTimeoutSeconds=0.3)) as client:
        r = await client.post("/v1/chat/completions", json=chat_body(), headers=AUTH)
        assert r.status_code == 503 and "within 0.3s" in r.json()["error"]["message"]
        assert r.headers["retry-after"]


async def test_track_override_is_refused_for_tenants_not_marked_for_it() -> None:
    stable, canary = Upstream("stable"), Upstream("canary")
    async with serve(stable.app) as s_url, serve(canary.app) as c_url:
        cfg = config({"stable": [s_url], "canary": [c_url]}, apiKeys={"team-a": KEY, "team-b": "sk-b"})
        async with router(cfg) as client:
            other = {"authorization": "Bearer sk-b"}
            for value in ("canary", "stable", "bogus"):
                r = await client.post("/v1/chat/completions", json=chat_body(),
                                      headers={**other, "x-pixtral-track": value})
                assert r.status_code == 403, r.text
                error = r.json()["error"]
                assert error["code"] == "track_override_not_allowed" and error["param"] == "x-pixtral-track"
                assert error["type"] == "permission_error"
                assert "'team-b'" in error["message"] and "x-pixtral-track" in error["message"]
            # Without the header team-b is served as usual; team-a (marked) may pin the canary.
            r = await client.post("/v1/chat/completions", json=chat_body(), headers=other)
            assert r.status_code == 200 and r.json()["served_by"] == "stable"
            r = await client.post("/v1/chat/completions", json=chat_body(),
                                  headers={**AUTH, "x-pixtral-track": "canary"})
            assert r.status_code == 200 and r.json()["served_by"] == "canary"
            m = (await client.get("/metrics")).text
            assert metric(m, "pixtral_router_requests_total", tenant="team-b", code="403") == 3
    assert len(canary.requests) == 1 and len(stable.requests) == 1


async def test_canary_override_and_sticky_over_http() -> None:
    stable, canary = Upstream("stable"), Upstream("canary")
    async with serve(stable.app) as s_url, serve(canary.app) as c_url:
        cfg = config({"stable": [s_url], "canary": [c_url]}, canary={"weight": 50, "stickyHeader": "x-session-id"})
        async with router(cfg) as client:
            r = await client.post("/v1/chat/completions", json=chat_body(),
                                  headers={**AUTH, "x-pixtral-track": "canary"})
            assert r.json()["served_by"] == "canary" and r.headers["x-pixtral-track"] == "canary"
            seen = set()
            for _ in range(10):
                r = await client.post("/v1/chat/completions", json=chat_body(),
                                      headers={**AUTH, "x-session-id": "user-7"})
                seen.add(r.headers["x-pixtral-track"])
            assert len(seen) == 1


async def test_completions_and_json_error_shape() -> None:
    up = Upstream("a")
    async with serve(up.app) as up_url, router(config({"stable": [up_url]})) as client:
        r = await client.post("/v1/completions", json={"model": "tiny", "prompt": "hi"}, headers=AUTH)
        assert r.status_code == 200
        r = await client.post("/v1/completions", content=b"[]", headers=AUTH)
        body = r.json()
        assert r.status_code == 400 and set(body["error"]) == {"message", "type", "param", "code"}
        assert json.loads(r.content)["error"]["type"] == "invalid_request_error"


async def test_upstream_errors_pass_through_and_timeouts_are_504() -> None:
    up = Upstream("a")
    async with serve(up.app) as up_url, router(config({"stable": [up_url]}, requestTimeoutSeconds=0.3)) as client:
        r = await client.post("/v1/chat/completions", json=chat_body(mode="fail"), headers=AUTH)
        assert r.status_code == 503 and r.json()["error"]["message"] == "engine overloaded"
        assert r.headers["x-pixtral-backend"] == up_url
        r = await client.post("/v1/chat/completions", json=chat_body(mode="slow"), headers=AUTH)
        assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"
        m = (await client.get("/metrics")).text
        assert metric(m, "pixtral_router_requests_total", track="stable", code="503") == 1
        assert metric(m, "pixtral_router_requests_total", track="stable", code="504") == 1


async def test_large_image_bodies_are_admitted_off_the_event_loop() -> None:
    import random

    up = Upstream("a")
    buf = io.BytesIO()
    Image.frombytes("RGB", (320, 320), random.Random(2).randbytes(320 * 320 * 3)).save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    body = {"model": "tiny", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}]}]}
    assert len(json.dumps(body)) > 256 * 1024  # the worker-thread path
    async with serve(up.app) as up_url:
        cfg = config({"stable": [up_url]}, admission={"imagesPerPrompt": 1, "maxImagePixels": 320 * 320})
        async with router(cfg) as client:
            r = await client.post("/v1/chat/completions", json=body, headers=AUTH)
            assert r.status_code == 200
            client.app.state.apply_config(parse_config(config({"stable": [up_url]}, admission={
                "imagesPerPrompt": 1, "maxImagePixels": 100 * 100})))
            r = await client.post("/v1/chat/completions", json=body, headers=AUTH)
            assert r.status_code == 400 and r.json()["error"]["code"] == "image_too_many_pixels"
    assert len(up.requests) == 1
    assert up.requests[0]["body"]["messages"][0]["content"][0]["image_url"]["url"] == url
