"""Request IDs (accepted or made, passed to vLLM, returned) and the JSON access log line per request."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time

import pytest
from pixtral_runtime.router import accesslog
from pixtral_runtime.router.accesslog import AccessLog, access_line, utc_stamp
from pixtral_runtime.router.guard import RequestInfo
from pixtral_runtime.router.requestid import MAX_LENGTH, accept_request_id, new_request_id
from pixtral_runtime.router.usage import Tap
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from test_router_app import AUTH, KEY, config, router, serve

pytestmark = pytest.mark.timeout(60)
SECRET_PROMPT = "the prompt text that must stay out of the log"


@pytest.mark.parametrize("value", [
    b"0f8c4f1e-8a43-4c8e-9d6a-2b7a3f5c9e10", b"01HZX3J5K6M7N8P9Q0R1S2T3V4", b"req_abc.def:42", b"YWJj+ZGVm/Zw==",
    b"a" * MAX_LENGTH,
])
def test_safe_ids_are_kept(value: bytes) -> None:
    assert accept_request_id(value) == value


@pytest.mark.parametrize("value", [
    None, b"", b"a" * (MAX_LENGTH + 1), b"two words", b'quote"d', b"line\nbreak", b"tab\t", b"back\\slash",
    "caf\u00e9".encode(), b"semi;colon", b"\x00",
])
def test_unsafe_or_missing_ids_are_replaced(value: bytes | None) -> None:
    replaced = accept_request_id(value)
    assert replaced != value and len(replaced) == 32 and int(replaced, 16) >= 0


def test_new_ids_differ() -> None:
    assert len({new_request_id() for _ in range(1000)}) == 1000


def test_access_line_has_the_fields_and_tokens_when_reported() -> None:
    request = RequestInfo(started=10.0)
    request.request_id, request.tenant, request.track = b"rid-1", "team-a", "canary"
    request.backend, request.status = "http://10.0.0.7:8000", 200
    request.request_bytes, request.response_bytes = 120, 480
    line = access_line(request, "POST", "/v1/chat/completions", wall=1796184000.25, now=10.0425)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    fields = json.loads(line)
    assert fields == {
        "time": "2026-12-02T04:00:00.250Z", "request_id": "rid-1", "method": "POST",
        "path": "/v1/chat/completions", "tenant": "team-a", "track": "canary", "backend": "http://10.0.0.7:8000",
        "status": 200, "duration_ms": 42.5, "request_bytes": 120, "response_bytes": 480,
    }
    tap = Tap()
    tap.prompt, tap.completion, tap.reported = 11, 7, True
    request.tap = tap
    fields = json.loads(access_line(request, "POST", "/v1/chat/completions", wall=0.0, now=10.0))
    assert fields["prompt_tokens"] == 11 and fields["completion_tokens"] == 7


def test_utc_stamp() -> None:
    assert utc_stamp(0.999) == "1970-01-01T00:00:00.999Z"
    assert utc_stamp(1796184000.5) == "2026-12-02T04:00:00.500Z"
    assert utc_stamp(1796184001.0) == "2026-12-02T04:00:01.000Z"  # the cached second moves on


def finished(request_id: bytes) -> RequestInfo:
    request = RequestInfo(started=time.perf_counter())
    request.request_id, request.status = request_id, 200
    return request


def test_without_an_event_loop_each_line_is_written_at_once(tmp_path) -> None:
    path = tmp_path / "access.log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        AccessLog(fd).record(finished(b"r1"), "POST", "/v1/completions")
        assert [x["request_id"] for x in read_lines(str(path))] == ["r1"]
    finally:
        os.close(fd)


async def test_lines_are_batched_into_one_write_per_interval(tmp_path, monkeypatch) -> None:
    path = tmp_path / "access.log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    writes: list[int] = []
    real_write = os.write
    monkeypatch.setattr(accesslog.os, "write", lambda f, data: writes.append(len(data)) or real_write(f, data))
    try:
        log = AccessLog(fd)
        for i in range(3):
            log.record(finished(b"r%d" % i), "POST", "/v1/chat/completions")
        assert writes == [] and read_lines(str(path)) == []
        await asyncio.sleep(accesslog.FLUSH_SECONDS * 3)
        assert len(writes) == 1 and [x["request_id"] for x in read_lines(str(path))] == ["r0", "r1", "r2"]
        # A full batch goes out at once, without waiting for the timer.
        big, recorded = b"x" * 120, 0
        while len(writes) == 1 and recorded < 10_000:  # bounded
            log.record(finished(big), "POST", "/v1/chat/completions")
            recorded += 1
        assert len(writes) == 2 and writes[1] >= accesslog.FLUSH_BYTES
        log.flush()  # nothing left over: every recorded line is in the file exactly once
        assert [x["request_id"] for x in read_lines(str(path))] == ["r0", "r1", "r2"] + ["x" * 120] * recorded
    finally:
        os.close(fd)


class UsageUpstream:
    """Answers like vLLM with a usage block; records the request IDs it was sent."""

    def __init__(self) -> None:
        self.request_ids: list[list[str]] = []
        self.app = Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"])])

    async def chat(self, request: Request):
        self.request_ids.append(request.headers.getlist("x-request-id"))
        # vLLM with --enable-request-id-headers echoes its own: the router's value must win.
        return JSONResponse({"object": "chat.completion", "choices": [],
                             "usage": {"prompt_tokens": 13, "completion_tokens": 5, "total_tokens": 18}},
                            headers={"x-request-id": "from-the-engine"})


def read_lines(path: str) -> list[dict]:
    with open(path, "rb") as f:
        return [json.loads(line) for line in f.read().splitlines()]


async def test_request_ids_travel_and_every_tenant_request_is_logged_once() -> None:
    up = UsageUpstream()
    body = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": SECRET_PROMPT}]}).encode()
    with tempfile.NamedTemporaryFile(suffix=".log") as logfile:
        async with serve(up.app) as up_url, router(config({"stable": [up_url]}), access_log=True) as client:
            fd = os.open(logfile.name, os.O_WRONLY | os.O_APPEND)
            client.app.access_log = AccessLog(fd)
            try:
                given = await client.post("/v1/chat/completions", content=body,
                                          headers={**AUTH, "x-request-id": "client-id-1"})
                bad = await client.post("/v1/chat/completions", content=body,
                                        headers={**AUTH, "x-request-id": "not ok\u00e9".encode()})
                made = await client.post("/v1/chat/completions", content=body, headers=AUTH)
                refused = await client.post("/v1/chat/completions", content=body,
                                            headers={"authorization": "Bearer sk-wrong", "x-request-id": "r-401"})
                unknown = await client.get("/nope")
                assert (await client.get("/healthz")).status_code == 200
                assert (await client.get("/metrics")).status_code == 200
                # Batched: out within FLUSH_SECONDS, without an explicit flush.
                for _ in range(100):  # bounded wait
                    if len(read_lines(logfile.name)) == 5:
                        break
                    await asyncio.sleep(0.02)
            finally:
                os.close(fd)
        lines = read_lines(logfile.name)

    assert given.status_code == 200 and given.headers.get_list("x-request-id") == ["client-id-1"]
    assert bad.status_code == 200 and made.status_code == 200
    replaced, generated = bad.headers["x-request-id"], made.headers["x-request-id"]
    assert len(replaced) == 32 and len(generated) == 32 and replaced != generated
    # vLLM got exactly the ID the client got back, once.
    assert up.request_ids == [["client-id-1"], [replaced], [generated]]
    assert refused.status_code == 401 and refused.headers["x-request-id"] == "r-401"
    assert unknown.status_code == 404 and len(unknown.headers["x-request-id"]) == 32

    # One line per tenant request, in order; probes and /metrics are not logged.
    assert [(x["request_id"], x["status"]) for x in lines] == [
        ("client-id-1", 200), (replaced, 200), (generated, 200), ("r-401", 401),
        (unknown.headers["x-request-id"], 404)]
    first = lines[0]
    assert first["tenant"] == "team-a" and first["track"] == "stable" and first["backend"] == up_url
    assert first["method"] == "POST" and first["path"] == "/v1/chat/completions"
    assert first["prompt_tokens"] == 13 and first["completion_tokens"] == 5
    assert first["request_bytes"] == len(body) and first["response_bytes"] == len(given.content)
    assert 0 < first["duration_ms"] < 60_000
    assert lines[3]["tenant"] == "-" and lines[3]["backend"] is None and "prompt_tokens" not in lines[3]
    text = json.dumps(lines)
    assert SECRET_PROMPT not in text and KEY not in text and "sk-wrong" not in text
