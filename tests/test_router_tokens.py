"""Per-tenant token budgets (tokens per minute, from the engine's usage) and the per-tenant
accounting counters: the configuration, the budget with an injected clock (and a property test of
its accounting), the usage taps over arbitrary chunkings, and the router app in front of an
OpenAI-shaped upstream, streaming with and without `include_usage`."""

from __future__ import annotations

import json
import math
import time

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pixtral_runtime.router import usage
from pixtral_runtime.router.config import ConfigError, Limits, TenancyPolicy, parse_config
from pixtral_runtime.router.errors import RateLimited
from pixtral_runtime.router.tenancy import TenantLimiter, replica_share
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route
from test_router_app import AUTH, KEY, config, metric, router, serve

pytestmark = pytest.mark.timeout(60)
BASE = {"backends": {"stable": ["http://127.0.0.1:9000"]}}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(tpm: int) -> tuple[TenantLimiter, Clock]:
    clock = Clock()
    limits = Limits(requests_per_minute=0, max_concurrent=0, tokens_per_minute=tpm)
    return TenantLimiter(TenancyPolicy(default_limits=limits), clock=clock), clock


# ---- configuration -------------------------------------------------------------------------------

def test_tokens_per_minute_parse_per_tenant_over_the_defaults() -> None:
    cfg = parse_config({**BASE, "tenancy": {
        "defaultLimits": {"tokensPerMinute": 1000}, "tenants": {"a": {"tokensPerMinute": 50}, "b": {}}}})
    assert cfg.tenancy.limits_for("a").tokens_per_minute == 50
    assert cfg.tenancy.limits_for("b").tokens_per_minute == 1000
    assert parse_config(BASE).tenancy.limits_for("x").tokens_per_minute == 0  # off unless set


@pytest.mark.parametrize(("raw", "message"), [
    ({"defaultLimits": {"tokensPerMinute": -5}},
     "config.json.tenancy.defaultLimits.tokensPerMinute must be an integer >= 0, got -5"),
    ({"tenants": {"a": {"tokensPerMinute": "many"}}},
     "config.json.tenancy.tenants.a.tokensPerMinute must be an integer >= 0"),
    ({"tenants": {"a": {"tokensPerMinute": True}}},
     "config.json.tenancy.tenants.a.tokensPerMinute must be an integer >= 0"),
])
def test_bad_token_budgets_are_named(raw, message) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({**BASE, "tenancy": raw})
    assert str(info.value).startswith(message)


# ---- the budget --------------------------------------------------------------------------------------

def test_an_answer_is_debited_after_it_and_the_next_request_waits_for_the_refill() -> None:
    lim, clock = limiter(600)  # 10 tokens a second
    lim.check_tokens("t")
    lim.debit_tokens("t", 900)  # admitted under budget, completes, overshoots by 300
    assert lim.tokens_left("t") == -300
    with pytest.raises(RateLimited) as info:
        lim.check_tokens("t")
    # 301 tokens (one above zero) at 10 per second.
    assert info.value.retry_after_seconds == 31 and info.value.code == "token_budget_exceeded"
    assert info.value.status == 429
    clock.now += 30
    with pytest.raises(RateLimited):
        lim.check_tokens("t")
    clock.now += 1
    lim.check_tokens("t")
    lim.check_tokens("other")  # budgets are per tenant
    clock.now += 3600
    assert lim.tokens_left("t") == 600  # refilled to one minute's worth, never more


def test_without_a_budget_nothing_is_refused_or_kept() -> None:
    lim, _ = limiter(0)
    for _ in range(100):
        lim.check_tokens("t")
        lim.debit_tokens("t", 10**6)
    assert lim.tokens_left("t") is None


def test_each_replica_enforces_its_share_and_a_lower_budget_applies_live() -> None:
    assert replica_share(Limits(0, 0, tokens_per_minute=1000), 3).tokens_per_minute == 334
    assert replica_share(Limits(0, 0), 3).tokens_per_minute == 0
    lim, _ = limiter(1000)
    lim.set_replicas(2)
    lim.debit_tokens("t", 500)
    with pytest.raises(RateLimited):
        lim.check_tokens("t")
    lim2, clock = limiter(1000)
    lim2.debit_tokens("t", 100)
    lim2.set_policy(TenancyPolicy(default_limits=Limits(0, 0, tokens_per_minute=50)))
    clock.now += 1
    assert lim2.tokens_left("t") == 50  # clipped to the new capacity


@settings(max_examples=200, deadline=None)
@given(
    tpm=st.integers(min_value=1, max_value=100_000),
    steps=st.lists(st.tuples(st.floats(min_value=0, max_value=120, allow_nan=False),
                             st.integers(min_value=0, max_value=200_000)), max_size=60),
)
def test_accounting_properties(tpm, steps) -> None:
    """Whatever the sequence of answers: (1) the tokens served never exceed one minute's worth plus
    the refill since the start plus one answer (the one admitted last, under budget); (2) a refused
    tenant that waits its Retry-After, with nothing else debited, is admitted; (3) a tenant under
    budget is never refused."""
    lim, clock = limiter(tpm)
    start = clock.now
    served = 0
    largest = 0
    for advance, tokens in steps:
        clock.now += advance
        left = lim.tokens_left("t")
        try:
            lim.check_tokens("t")
        except RateLimited as refused:
            assert left <= 0
            saved = clock.now
            clock.now += refused.retry_after_seconds
            lim.check_tokens("t")  # (2)
            clock.now = saved
            continue
        assert left > 0  # (3) the contrapositive: admitted only when under budget
        lim.debit_tokens("t", tokens)
        served += tokens
        largest = max(largest, tokens)
        refill = (clock.now - start) / 60.0 * tpm
        assert served <= tpm + refill + largest + 1e-6 * served  # (1)


# ---- usage: asking for it, reading it, stripping it ------------------------------------------------

def test_a_stream_asks_for_usage_and_other_requests_are_left_alone() -> None:
    plain = {"model": "m", "messages": []}
    raw = json.dumps(plain).encode()
    assert usage.ask_for_usage(raw, plain) == (raw, False)
    stream = {**plain, "stream": True}
    body, added = usage.ask_for_usage(json.dumps(stream).encode() + b"\n", stream)
    assert added and json.loads(body)["stream_options"] == {"include_usage": True}
    # A client's own options are kept, include_usage merged in (the last duplicate key wins).
    own = {**stream, "stream_options": {"continuous_usage_stats": False}}
    body, added = usage.ask_for_usage(json.dumps(own).encode(), own)
    assert added and json.loads(body)["stream_options"] == {"continuous_usage_stats": False, "include_usage": True}
    asked = {**stream, "stream_options": {"include_usage": True}}
    raw = json.dumps(asked).encode()
    assert usage.ask_for_usage(raw, asked) == (raw, False)
    # A large body grows in place.
    big = bytearray(json.dumps({**stream, "pad": "x" * 100_000}).encode())
    out, added = usage.ask_for_usage(big, stream)
    assert added and out is big and json.loads(bytes(out))["stream_options"]["include_usage"] is True


def test_usage_is_read_from_a_json_answer_and_never_from_its_text() -> None:
    answer = {"choices": [{"message": {"content": 'say "usage": {"prompt_tokens": 999}'}}],
              "usage": {"prompt_tokens": 12, "total_tokens": 19, "completion_tokens": 7}}
    assert usage.usage_in(json.dumps(answer).encode()) == (12, 7)
    tricky = {"choices": [{"message": {"content": 'say "usage": {"prompt_tokens": 999}'}}]}
    assert usage.usage_in(json.dumps(tricky).encode()) is None
    assert usage.usage_in(b'{"error": {"message": "bad"}}') is None


def sse(*docs) -> bytes:
    return b"".join(b"data: " + (d if isinstance(d, bytes) else json.dumps(d).encode()) + b"\n\n" for d in docs)


TOKENS = [{"choices": [{"index": 0, "delta": {"content": w}}]} for w in ("a", "b", "c")]
USAGE_EVENT = {"choices": [], "usage": {"prompt_tokens": 30, "total_tokens": 33, "completion_tokens": 3}}
STREAM = sse(*TOKENS, USAGE_EVENT, b"[DONE]")
STRIPPED = sse(*TOKENS, b"[DONE]")


def relay(tap: usage.Tap, chunks: list[bytes]) -> bytes:
    return b"".join(tap.feed(c) for c in chunks) + tap.finish()


def cut(data: bytes, points: list[int]) -> list[bytes]:
    bounds = [0, *sorted(set(p % (len(data) + 1) for p in points)), len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


@settings(max_examples=200, deadline=None)
@given(points=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30), strip=st.booleans())
def test_the_stream_tap_over_any_chunking(points, strip) -> None:
    tap = usage.SseTap(strip=strip)
    out = relay(tap, cut(STREAM, points))
    assert out == (STRIPPED if strip else STREAM)
    assert (tap.prompt, tap.completion, tap.reported, tap.tokens) == (30, 3, True, 33)


def test_a_stream_cut_short_is_debited_one_token_per_event() -> None:
    tap = usage.SseTap(strip=True)
    assert relay(tap, [sse(*TOKENS)]) == sse(*TOKENS)
    assert not tap.reported and tap.tokens == 3


def test_something_that_is_not_an_event_stream_is_relayed_untouched() -> None:
    tap = usage.SseTap(strip=True)
    blob = b"x" * (usage.MAX_EVENT_BYTES + 10)
    assert relay(tap, [blob[:1000], blob[1000:]]) == blob


def test_a_large_json_answer_is_read_from_its_tail() -> None:
    tap = usage.BodyTap()
    answer = json.dumps({"choices": [{"text": "y" * 50_000}], "usage": {"prompt_tokens": 5, "completion_tokens": 6}})
    assert relay(tap, cut(answer.encode(), [10, 30_000, 49_990])) == answer.encode()
    assert (tap.prompt, tap.completion) == (5, 6)


# ---- the router app ------------------------------------------------------------------------------------

class Engine:
    """An OpenAI-shaped upstream that reports usage as vLLM does: in a non-streaming answer, and in a
    last usage-only event of a stream only when asked with stream_options.include_usage."""

    def __init__(self, prompt: int = 40, completion: int = 3) -> None:
        self.prompt, self.completion = prompt, completion
        self.bodies: list[dict] = []
        self.app = Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"]),
                                     Route("/v1/completions", self.chat, methods=["POST"])])

    async def chat(self, request: Request):
        body = await request.json()
        self.bodies.append(body)
        counts = {"prompt_tokens": self.prompt, "total_tokens": self.prompt + self.completion,
                  "completion_tokens": self.completion}
        if not body.get("stream"):
            return JSONResponse({"object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "abc"}}], "usage": counts})
        include = (body.get("stream_options") or {}).get("include_usage") is True

        async def events():
            for i in range(self.completion):
                yield sse({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": str(i)}}]})
            if include:
                yield sse({"object": "chat.completion.chunk", "choices": [], "usage": counts})
            yield b"data: [DONE]\n\n"
        return StreamingResponse(events(), media_type="text/event-stream")


def budget_config(url: str, tpm: int) -> dict:
    return config({"stable": [url]}, tenancy={"defaultLimits": {
        "requestsPerMinute": 0, "maxConcurrent": 0, "tokensPerMinute": tpm}})


def chat(**extra) -> dict:
    return {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], **extra}


async def events_of(client: httpx.AsyncClient, body: dict) -> list[str]:
    async with client.stream("POST", "/v1/chat/completions", json=body, headers=AUTH) as r:
        assert r.status_code == 200
        text = (await r.aread()).decode()
    return [e for e in text.split("\n\n") if e]


async def test_over_its_token_budget_a_tenant_gets_429_and_the_counters_show_its_usage() -> None:
    engine = Engine(prompt=40, completion=3)
    async with serve(engine.app) as url, router(budget_config(url, 60)) as client:
        # 43 tokens each: the first two are admitted under budget (60, then 17 left); the third waits.
        for _ in range(2):
            assert (await client.post("/v1/chat/completions", json=chat(), headers=AUTH)).status_code == 200
        r = await client.post("/v1/chat/completions", json=chat(), headers=AUTH)
        assert r.status_code == 429
        # 26 tokens short (one above zero) at one token a second.
        assert 25 <= int(r.headers["retry-after"]) <= 27
        assert r.json()["error"]["type"] == "rate_limit_error"
        assert r.json()["error"]["code"] == "token_budget_exceeded"
        assert "60 tokens per minute" in r.json()["error"]["message"]
        # A bad key leaves no tenant series behind.
        bad = await client.post("/v1/chat/completions", json=chat(), headers={"authorization": "Bearer nope"})
        assert bad.status_code == 401
        m = (await client.get("/metrics")).text
        assert metric(m, "pixtral_router_tenant_prompt_tokens_total", tenant="team-a") == 80
        assert metric(m, "pixtral_router_tenant_completion_tokens_total", tenant="team-a") == 6
        assert metric(m, "pixtral_router_tenant_requests_total", tenant="team-a", code="200") == 2
        assert metric(m, "pixtral_router_tenant_requests_total", tenant="team-a", code="429") == 1
        assert metric(m, "pixtral_router_tenant_requests_total", code="401") == 0
        assert 'pixtral_router_tenant_requests_total{code="401"' not in m
    assert len(engine.bodies) == 2  # the refused request never reached the engine


async def test_a_stream_without_include_usage_is_counted_and_the_client_gets_no_usage_event() -> None:
    engine = Engine(prompt=40, completion=3)
    async with serve(engine.app) as url, router(budget_config(url, 1000)) as client:
        started = time.monotonic()
        events = await events_of(client, chat(stream=True))
        assert engine.bodies[0]["stream_options"] == {"include_usage": True}  # the router asked
        assert events[-1] == "data: [DONE]"
        assert len(events) == 4 and all('"usage"' not in e for e in events)
        m = (await client.get("/metrics")).text
        assert metric(m, "pixtral_router_tenant_prompt_tokens_total", tenant="team-a") == 40
        assert metric(m, "pixtral_router_tenant_completion_tokens_total", tenant="team-a") == 3
        # 1000 - 43, plus what the bucket refilled meanwhile (1000 a minute: a loaded machine takes time).
        refilled = 1000 / 60 * (time.monotonic() - started)
        assert 956 <= client.app.state.limiter.tokens_left("team-a") <= 957 + refilled + 1


async def test_a_stream_with_include_usage_keeps_its_usage_event() -> None:
    engine = Engine(prompt=40, completion=3)
    async with serve(engine.app) as url, router(budget_config(url, 1000)) as client:
        events = await events_of(client, chat(stream=True, stream_options={"include_usage": True}))
        assert engine.bodies[0]["stream_options"] == {"include_usage": True}
        usage_events = [json.loads(e[len("data: "):]) for e in events if '"usage"' in e]
        assert usage_events == [{"object": "chat.completion.chunk", "choices": [], "usage": {
            "prompt_tokens": 40, "total_tokens": 43, "completion_tokens": 3}}]
        m = (await client.get("/metrics")).text
        assert metric(m, "pixtral_router_tenant_prompt_tokens_total", tenant="team-a") == 40


async def test_a_request_admitted_under_budget_completes_and_the_budget_goes_negative() -> None:
    engine = Engine(prompt=500, completion=20)
    async with serve(engine.app) as url, router(budget_config(url, 100)) as client:
        events = await events_of(client, chat(stream=True))
        assert events[-1] == "data: [DONE]"
        assert client.app.state.limiter.tokens_left("team-a") == pytest.approx(-420, abs=1)
        r = await client.post("/v1/chat/completions", json=chat(stream=True), headers=AUTH)
        assert r.status_code == 429
        assert math.isclose(int(r.headers["retry-after"]), 253, abs_tol=2)  # 421 tokens at 100/min


async def test_completions_are_budgeted_as_well() -> None:
    engine = Engine(prompt=10, completion=2)
    async with serve(engine.app) as url, router(budget_config(url, 1000)) as client:
        r = await client.post("/v1/completions", json={"model": "tiny", "prompt": "hi"}, headers=AUTH)
        assert r.status_code == 200
        m = (await client.get("/metrics")).text
        assert metric(m, "pixtral_router_tenant_prompt_tokens_total", tenant="team-a") == 10
    assert KEY not in m


# ---- from the spec ---------------------------------------------------------------------------------------

def test_token_budgets_go_from_the_spec_through_the_configmap_to_the_router() -> None:
    from pixtral_operator.render.router import router_config
    from pixtral_operator.spec import parse

    spec = parse("demo", "team", {"router": {
        "defaultLimits": {"tokensPerMinute": 100_000},
        "tenants": [{"name": "a", "tokensPerMinute": 5000}, {"name": "b", "requestsPerMinute": 10}],
    }})
    tenancy = parse_config(router_config(spec)).tenancy
    assert tenancy.limits_for("a").tokens_per_minute == 5000
    assert tenancy.limits_for("b").tokens_per_minute == 100_000
    assert tenancy.limits_for("c").tokens_per_minute == 100_000


def test_the_crd_bounds_tokens_per_minute_where_the_other_limits_are() -> None:
    import pathlib

    import yaml

    crd = yaml.safe_load(pathlib.Path(__file__).parents[1].joinpath(
        "manifests/crds/serving.pixtral.dev_pixtraldeployments.yaml").read_text())
    router_schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["router"]
    for props in (router_schema["properties"]["defaultLimits"]["properties"],
                  router_schema["properties"]["tenants"]["items"]["properties"]):
        assert props["tokensPerMinute"]["type"] == "integer" and props["tokensPerMinute"]["minimum"] == 1


async def test_a_new_budget_applies_to_a_running_router_without_a_restart() -> None:
    engine = Engine(prompt=40, completion=3)
    async with serve(engine.app) as url, router(budget_config(url, 40)) as client:
        assert (await client.post("/v1/chat/completions", json=chat(), headers=AUTH)).status_code == 200
        assert (await client.post("/v1/chat/completions", json=chat(), headers=AUTH)).status_code == 429
        # What the ConfigMap watch does with a new config.json (discovery.py).
        client.app.state.apply_config(parse_config(budget_config(url, 0)))
        assert (await client.post("/v1/chat/completions", json=chat(), headers=AUTH)).status_code == 200
        client.app.state.apply_config(parse_config(budget_config(url, 10)))
        r = await client.post("/v1/chat/completions", json=chat(), headers=AUTH)
        assert r.status_code == 429 and "10 tokens per minute" in r.json()["error"]["message"]


def test_a_stream_that_arrives_whole_is_cut_the_same_way() -> None:
    tap = usage.SseTap(strip=True)
    assert tap.body(STREAM) == STRIPPED and tap.tokens == 33
    assert usage.BodyTap().body(b'{"usage": {"prompt_tokens": 1}}') == b'{"usage": {"prompt_tokens": 1}}'


def test_the_dashboard_shows_each_tenants_usage() -> None:
    import pathlib

    board = json.loads(pathlib.Path(__file__).parents[1].joinpath(
        "charts/pixtral-operator/files/dashboard.json").read_text())
    queries = " ".join(t["expr"] for p in board["panels"] for t in p["targets"])
    for name in ("pixtral_router_tenant_prompt_tokens_total", "pixtral_router_tenant_completion_tokens_total",
                 "pixtral_router_tenant_images_total", "pixtral_router_tenant_megapixels_total"):
        assert f"sum by (tenant) (rate({name}" in queries, name
