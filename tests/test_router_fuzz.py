"""Fuzzing the router (hypothesis): chat/completions bodies shaped like the schema with anything in
the slots, and raw HTTP/1.1 framing. Every input gets a 2xx or an OpenAI-style 4xx, never a 5xx of
the router's own; the router keeps serving afterwards.

The router runs as the CLI builds it (`main.server_config`) in a thread of its own, in front of a
loopback upstream that answers every request with 200. Example counts keep the suite well under a
minute on the 2-core test machine.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import pytest
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pixtral_runtime.router.app import create_app
from pixtral_runtime.router.config import parse_config
from pixtral_runtime.router.main import listen_sockets, server_config
from pixtral_runtime.router.parts import PART_TYPES, TYPELESS_KEYS
from pixtral_runtime.router.settings import RouterSettings

pytestmark = pytest.mark.timeout(120)
KEY = "sk-fuzz"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Upstream:
    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()


class _Router:
    """The router and its upstream on one event loop in a daemon thread."""

    def __init__(self) -> None:
        self.upstream = _Upstream()
        cfg = {"deployment": "fuzz", "backends": {"stable": [self.upstream.url]}, "apiKeys": {"team-a": KEY},
               "tenancy": {"defaultLimits": {"requestsPerMinute": 0, "maxConcurrent": 0}},
               "admission": {"imagesPerPrompt": 2, "maxBodyBytes": 256 * 1024}}
        self.settings = RouterSettings(config=parse_config(cfg), host="127.0.0.1", port=_free_port(),
                                       metrics_port=_free_port(), header_timeout_seconds=0.3,
                                       body_timeout_seconds=0.3, max_header_bytes=16 * 1024)
        self.server = uvicorn.Server(server_config(create_app(self.settings), self.settings, loop="asyncio",
                                                   log_level="critical"))
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            upstream = await asyncio.start_server(self.upstream._handle, sock=self.upstream.sock)
            async with upstream:
                await self.server.serve(sockets=listen_sockets(self.settings))

        asyncio.run(main())

    def __enter__(self) -> _Router:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and time.monotonic() < deadline and self.thread.is_alive():
            time.sleep(0.01)
        assert self.server.started, "the router did not start"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(15)

    def exchange(self, data: bytes, *, timeout: float = 5.0) -> bytes:
        with socket.create_connection(("127.0.0.1", self.settings.port), timeout=timeout) as sock:
            # No half-close after the request: uvicorn closes a connection at EOF, answer or not. An
            # incomplete request runs into the router's header or body deadline (0.3 s) instead.
            try:
                sock.sendall(data)
            except OSError:
                pass  # the router may refuse and close before it has read everything
            chunks = []
            try:
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
            except (TimeoutError, ConnectionResetError):
                pass
        return b"".join(chunks)


@pytest.fixture(scope="module")
def router():
    with _Router() as r:
        yield r


def _statuses(answer: bytes) -> list[int]:
    """The status codes of every response in `answer` (pipelined requests get several)."""
    out = []
    for line in answer.split(b"\r\n"):
        if line.startswith(b"HTTP/1.1 ") and line[9:12].isdigit():
            out.append(int(line[9:12]))
    return out


def _assert_no_router_5xx(answer: bytes) -> None:
    for status in _statuses(answer):
        assert status < 500, answer[:600]
    if b" 4" in answer[:12]:
        # An OpenAI-shaped error body (uvicorn's own 400 for unparseable framing is plain text).
        body = answer.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in answer else b""
        if body.startswith(b"{"):
            error = json.loads(body.split(b"HTTP/1.1")[0])["error"]
            assert {"message", "type", "param", "code"} <= set(error)


def _post(path: str, body: bytes, *, auth: bool = True) -> bytes:
    head = [f"POST {path} HTTP/1.1", "host: router", "content-type: application/json",
            f"content-length: {len(body)}", "connection: close"]
    if auth:
        head.append(f"authorization: Bearer {KEY}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


# ---- the request schema --------------------------------------------------------------------------

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False),
                     st.text(max_size=30))
_json = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=10), inner, max_size=4)),
                     max_leaves=12)
_urls = st.one_of(
    st.sampled_from(["data:image/png;base64,iVBORw0KGgo=", "data:image/png;base64,!!!", "data:,", "data:",
                     "file:///etc/passwd", "http://127.0.0.1/x.png", "https://example.com/x.png", "", "x",
                     "data:image/png;base64," + "A" * 5000]),
    st.text(max_size=40),
    _json,
)
_part_keys = st.sampled_from(sorted(set(PART_TYPES) | set(TYPELESS_KEYS) | {"type", "url", "uuid", "detail",
                                                                            "file_id", "text"}))
_parts = st.one_of(
    st.text(max_size=20),
    st.fixed_dictionaries({"type": st.sampled_from(sorted(PART_TYPES) + ["bogus"]), "image_url": _urls},
                          optional={"text": _json, "uuid": _json, "detail": _json}),
    st.fixed_dictionaries({"image_url": st.one_of(_urls, st.fixed_dictionaries({"url": _urls}))}),
    st.dictionaries(_part_keys, st.one_of(_urls, _json), max_size=4),
    _json,
)
_messages = st.lists(
    st.one_of(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool", 3]),
                                     "content": st.one_of(st.none(), st.text(max_size=20),
                                                          st.lists(_parts, max_size=5), _json)}),
              _json),
    max_size=4,
)
_chat = st.one_of(
    st.fixed_dictionaries({"model": _json, "messages": _messages}, optional={"stream": _json, "max_tokens": _json}),
    _json,
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(body=_chat, path=st.sampled_from(["/v1/chat/completions", "/v1/completions"]))
def test_any_chat_or_completions_body_gets_a_2xx_or_an_openai_4xx(router: _Router, body, path: str) -> None:
    answer = router.exchange(_post(path, json.dumps(body).encode()))
    statuses = _statuses(answer)
    assert statuses and all(s < 500 for s in statuses), answer[:600]
    _assert_no_router_5xx(answer)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.binary(max_size=400))
def test_any_bytes_as_a_body_get_a_2xx_or_an_openai_4xx(router: _Router, raw: bytes) -> None:
    answer = router.exchange(_post("/v1/chat/completions", raw))
    assert _statuses(answer), answer[:300]
    _assert_no_router_5xx(answer)


# ---- HTTP/1.1 framing ----------------------------------------------------------------------------

_token = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12)
_header_lines = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["content-length", "transfer-encoding", "authorization", "connection", "expect",
                                   "host", "x-pixtral-track", "te", "upgrade"]), st.text(max_size=20)),
        st.tuples(_token, st.text(max_size=30)),
    ),
    max_size=6,
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(method=st.sampled_from(["GET", "POST", "HEAD", "PUT", "OPTIONS", "G\x00T", "POST "]),
       path=st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/models", "/healthz", "/readyz",
                             "/metrics", "/", "//", "/v1/../metrics", "/%00", "*", "/v1/chat/completions?x=1"]),
       version=st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2", "HTTP/1.1 extra", ""]),
       headers=_header_lines, body=st.binary(max_size=200),
       chunked=st.booleans(), garbage=st.binary(max_size=40))
def test_any_framing_gets_a_2xx_or_4xx_and_never_crashes_the_router(router: _Router, method, path, version, headers,
                                                                    body, chunked, garbage) -> None:
    lines = [f"{method} {path} {version}".encode("utf-8", "surrogateescape")]
    lines += [f"{k}: {v}".encode("utf-8", "surrogateescape") for k, v in headers]
    if chunked:
        lines.append(b"transfer-encoding: chunked")
        payload = b"%x\r\n%s\r\n" % (len(body), body) + garbage + b"0\r\n\r\n"
    else:
        lines.append(b"content-length: %d" % len(body))
        payload = body + garbage
    answer = router.exchange(b"\r\n".join(lines) + b"\r\n\r\n" + payload)
    _assert_no_router_5xx(answer)


def test_the_router_still_serves_after_the_fuzzing(router: _Router) -> None:
    answer = router.exchange(_post("/v1/chat/completions", json.dumps(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()))
    assert _statuses(answer) == [200]
    assert router.thread.is_alive()
