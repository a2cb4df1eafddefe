"""Fair queuing when a track is saturated: the pure queue (weighted round robin, bounds, a property
test of its fairness), the gate that waits at the edge, its configuration, and the router app
serving a quiet tenant ahead of a noisy tenant's backlog."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pixtral_runtime.router.config import ConfigError, QueuePolicy, parse_config
from pixtral_runtime.router.errors import QueueTimeout, RateLimited, ServerBusy
from pixtral_runtime.router.fairqueue import FairQueue, QueueFull, TenantQueueFull, capacity, must_wait
from pixtral_runtime.router.gate import TrackGate
from pixtral_runtime.router.tenancy import TenantLimiter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from test_router_app import config, metric, router, serve

pytestmark = pytest.mark.timeout(60)
BASE = {"backends": {"stable": ["http://127.0.0.1:9000"]}}


# ---- the pure decisions -----------------------------------------------------------------------------

def test_capacity_is_each_backends_target_split_between_router_replicas() -> None:
    assert capacity(ready_backends=2, backend_concurrency=8, replicas=1) == 16
    assert capacity(2, 8, 3) == 6  # ceil(8 / 3) = 3 per backend
    assert capacity(2, 1, 4) == 2  # at least one per backend
    assert capacity(0, 8, 1) == 0  # no backend ready: the wait for a backend applies, not the queue
    assert capacity(3, 0, 1) == 0  # off


def test_a_newcomer_waits_at_capacity_or_behind_others() -> None:
    assert not must_wait(in_flight=3, capacity=4, queued=0)
    assert must_wait(4, 4, 0)
    assert must_wait(1, 4, 1)  # never overtakes a queue
    assert not must_wait(100, 0, 5)  # off


def drain(queue: FairQueue) -> list[str]:
    out = []
    while (turn := queue.pop()) is not None:
        out.append(turn[1])
    return out


def test_tenants_are_served_in_turn_whatever_their_backlog() -> None:
    queue: FairQueue[str] = FairQueue()
    for i in range(5):
        queue.push("noisy", f"n{i}")
    queue.push("quiet", "q0")
    queue.push("quiet", "q1")
    assert drain(queue) == ["n0", "q0", "n1", "q1", "n2", "n3", "n4"]


def test_a_weight_is_requests_per_turn() -> None:
    queue: FairQueue[str] = FairQueue()
    for i in range(6):
        queue.push("gold", f"g{i}", weight=3)
    for i in range(3):
        queue.push("free", f"f{i}")
    assert drain(queue) == ["g0", "g1", "g2", "f0", "g3", "g4", "g5", "f1", "f2"]


def test_bounds_and_removal() -> None:
    queue: FairQueue[str] = FairQueue()
    queue.push("a", "a0", max_per_tenant=2, max_total=3)
    queue.push("a", "a1", max_per_tenant=2, max_total=3)
    with pytest.raises(TenantQueueFull, match="the bound is 2"):
        queue.push("a", "a2", max_per_tenant=2, max_total=3)
    queue.push("b", "b0", max_per_tenant=2, max_total=3)
    with pytest.raises(QueueFull, match="the bound is 3"):
        queue.push("c", "c0", max_per_tenant=2, max_total=3)
    assert queue.remove("a", "a0") and not queue.remove("a", "a0") and not queue.remove("zz", "x")
    assert queue.remove("b", "b0") and queue.waiting("b") == 0
    assert drain(queue) == ["a1"] and len(queue) == 0


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(st.one_of(
    st.tuples(st.just("push"), st.sampled_from("abcd"), st.integers(min_value=1, max_value=4)),
    st.tuples(st.just("pop"), st.just(""), st.just(0)),
    st.tuples(st.just("remove"), st.sampled_from("abcd"), st.just(0)),
), max_size=120))
def test_queue_properties(ops) -> None:
    """Every item comes out once, in FIFO order per tenant; and while a tenant keeps waiting, no
    other tenant is served more than its weight between two of its turns."""
    queue: FairQueue[tuple[str, int]] = FairQueue()
    model: dict[str, list[tuple[str, int]]] = {}
    weights: dict[str, int] = {}
    since: dict[str, dict[str, int]] = {}  # waiting tenant -> served others since it last got a turn
    counter = 0
    for op, tenant, weight in ops:
        if op == "push":
            item = (tenant, counter)
            counter += 1
            queue.push(tenant, item, weight=weight)
            weights[tenant] = weight
            if not model.get(tenant):
                since[tenant] = {}
            model.setdefault(tenant, []).append(item)
        elif op == "remove" and model.get(tenant):
            item = model[tenant].pop(len(model[tenant]) // 2)
            assert queue.remove(tenant, item)
            if not model[tenant]:
                since.pop(tenant, None)
        elif op == "pop":
            turn = queue.pop()
            if not any(model.values()):
                assert turn is None
                continue
            served, item = turn
            assert model[served][0] == item  # FIFO within a tenant
            model[served].pop(0)
            for other, counts in since.items():
                if other != served:
                    counts[served] = counts.get(served, 0) + 1
                    # a tenant queued behind another's turn in progress may see that turn finish first
                    assert counts[served] <= 2 * weights[served], (other, served, counts)
            since[served] = {}
            if not model[served]:
                since.pop(served)
        assert len(queue) == sum(len(v) for v in model.values())
    assert sorted(drain(queue)) == sorted(i for items in model.values() for i in items)


# ---- the gate -------------------------------------------------------------------------------------------

POLICY = QueuePolicy(backend_concurrency=1, max_queued_per_tenant=2, max_queued=10, max_wait_seconds=5)


async def test_the_gate_holds_requests_beyond_capacity_and_hands_places_on_in_turn() -> None:
    gate = TrackGate()
    assert await gate.acquire("noisy", 1, 1, POLICY)
    order: list[str] = []

    async def wait(tenant: str) -> None:
        assert await gate.acquire(tenant, 1, 1, POLICY)
        order.append(tenant)

    tasks = [asyncio.create_task(wait("noisy")), asyncio.create_task(wait("noisy"))]
    await asyncio.sleep(0.01)
    tasks.append(asyncio.create_task(wait("quiet")))
    await asyncio.sleep(0.01)
    assert order == [] and len(gate.queue) == 3
    with pytest.raises(RateLimited) as info:
        await gate.acquire("noisy", 1, 1, POLICY)
    assert info.value.code == "tenant_queue_full" and info.value.status == 429
    for _ in range(3):
        gate.release()
        await asyncio.sleep(0.01)
    await asyncio.gather(*tasks)
    assert order == ["noisy", "quiet", "noisy"]
    assert gate.in_flight == 1


async def test_a_wait_past_the_bound_is_a_503_and_leaves_the_queue() -> None:
    gate = TrackGate()
    await gate.acquire("a", 1, 1, POLICY)
    with pytest.raises(QueueTimeout) as info:
        await gate.acquire("b", 1, 1, QueuePolicy(backend_concurrency=1, max_wait_seconds=0.05))
    assert info.value.status == 503 and info.value.code == "queue_timeout"
    assert len(gate.queue) == 0
    small = QueuePolicy(backend_concurrency=1, max_queued=1)
    waiting = asyncio.create_task(gate.acquire("b", 1, 1, small))
    await asyncio.sleep(0.01)
    with pytest.raises(ServerBusy) as busy:
        await gate.acquire("c", 1, 1, small)
    assert busy.value.code == "queue_full"
    waiting.cancel()  # a client gone while waiting
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert len(gate.queue) == 0 and gate.in_flight == 1


async def test_a_place_handed_to_a_request_that_just_left_is_handed_on() -> None:
    gate = TrackGate()
    await gate.acquire("a", 1, 1, POLICY)
    first = asyncio.create_task(gate.acquire("b", 1, 1, POLICY))
    second = asyncio.create_task(gate.acquire("c", 1, 1, POLICY))
    await asyncio.sleep(0.01)
    gate.release()  # the place goes to b ...
    first.cancel()  # ... which is cancelled before it runs: c must get it
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await asyncio.wait_for(second, 1)
    assert gate.in_flight == 1


async def test_without_capacity_the_gate_is_off() -> None:
    gate = TrackGate()
    for _ in range(100):
        assert not await gate.acquire("a", 0, 1, POLICY)
    assert gate.in_flight == 0


# ---- configuration ------------------------------------------------------------------------------------

def test_fair_queuing_and_weights_parse() -> None:
    cfg = parse_config({**BASE, "fairQueuing": {"backendConcurrency": 8, "maxQueuedPerTenant": 5, "maxWaitSeconds": 2},
                        "tenancy": {"tenants": {"gold": {"weight": 4}}}})
    assert cfg.fair_queuing == QueuePolicy(backend_concurrency=8, max_queued_per_tenant=5, max_queued=1000,
                                           max_wait_seconds=2.0)
    assert cfg.tenancy.limits_for("gold").weight == 4 and cfg.tenancy.limits_for("other").weight == 1
    assert parse_config(BASE).fair_queuing.backend_concurrency == 0  # off unless set
    # A weight is not a limit: every replica keeps it whole.
    limiter = TenantLimiter(cfg.tenancy)
    limiter.set_replicas(3)
    assert limiter.limits_for("gold").weight == 4


@pytest.mark.parametrize(("raw", "message"), [
    ({"fairQueuing": {"backendConcurrency": -1}}, "config.json.fairQueuing.backendConcurrency must be an integer >= 0"),
    ({"fairQueuing": {"maxQueuedPerTenant": 0}}, "config.json.fairQueuing.maxQueuedPerTenant must be an integer >= 1"),
    ({"fairQueuing": {"maxWaitSeconds": "long"}}, "config.json.fairQueuing.maxWaitSeconds must be a number"),
    ({"fairQueuing": []}, "config.json.fairQueuing must be an object"),
    ({"tenancy": {"tenants": {"a": {"weight": 0}}}}, "config.json.tenancy.tenants.a.weight must be an integer >= 1"),
    ({"tenancy": {"tenants": {"a": {"weight": 5000}}}}, "config.json.tenancy.tenants.a.weight must be an integer in [1, 1000]"),
])
def test_bad_fair_queuing_settings_are_named(raw, message) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({**BASE, **raw})
    assert str(info.value).startswith(message)


# ---- the router app ----------------------------------------------------------------------------------

class SlowEngine:
    """An upstream that takes a while per request and records the tenants in arrival order."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.arrivals: list[str] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.app = Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"])])

    async def chat(self, request: Request):
        body = await request.json()
        self.arrivals.append(body["user"])
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.seconds)
        finally:
            self.in_flight -= 1
        return JSONResponse({"object": "chat.completion", "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}})


KEYS = {"noisy": "sk-noisy", "quiet": "sk-quiet"}


def fair_config(url: str, **fair) -> dict:
    return config({"stable": [url]}, apiKeys=KEYS, fairQueuing={"backendConcurrency": 1, **fair})


async def send(client: httpx.AsyncClient, tenant: str) -> httpx.Response:
    return await client.post("/v1/chat/completions", headers={"authorization": f"Bearer {KEYS[tenant]}"},
                             json={"model": "tiny", "user": tenant, "messages": [{"role": "user", "content": "hi"}]})


async def test_a_quiet_tenant_is_served_ahead_of_a_noisy_backlog() -> None:
    engine = SlowEngine(0.15)
    async with serve(engine.app) as url, router(fair_config(url)) as client:
        noisy = [asyncio.create_task(send(client, "noisy")) for _ in range(6)]
        await asyncio.sleep(0.1)  # the noisy backlog is queued
        quiet = await send(client, "quiet")
        assert quiet.status_code == 200
        m = (await client.get("/metrics")).text
        assert metric(m, "pixtral_router_queued_requests", track="stable") >= 1
        assert all(r.status_code == 200 for r in await asyncio.gather(*noisy))
    # One noisy request in flight, then the turns alternate: the quiet one is third, not seventh.
    assert engine.arrivals.index("quiet") <= 2, engine.arrivals
    assert engine.most_in_flight == 1


async def test_over_the_bounds_the_router_answers_429_and_503_with_clear_bodies() -> None:
    engine = SlowEngine(0.5)
    async with serve(engine.app) as url, router(fair_config(url, maxQueuedPerTenant=1, maxWaitSeconds=0.2)) as client:
        first = asyncio.create_task(send(client, "noisy"))
        await asyncio.sleep(0.1)
        waiting = asyncio.create_task(send(client, "noisy"))
        await asyncio.sleep(0.05)
        full = await send(client, "noisy")
        assert full.status_code == 429 and full.headers["retry-after"] == "1"
        assert full.json()["error"]["code"] == "tenant_queue_full"
        timed_out = await waiting
        assert timed_out.status_code == 503 and "retry-after" in timed_out.headers
        assert timed_out.json()["error"]["code"] == "queue_timeout"
        assert "waited its turn" in timed_out.json()["error"]["message"]
        assert (await first).status_code == 200
        m = (await client.get("/metrics")).text
        assert metric(m, "pixtral_router_tenant_requests_total", tenant="noisy", code="503") == 1
    assert engine.arrivals == ["noisy"]


def test_fair_queuing_and_weights_go_from_the_spec_to_the_router() -> None:
    from pixtral_operator.render.router import router_config
    from pixtral_operator.spec import parse

    spec = parse("demo", "team", {"router": {
        "fairQueuing": {"backendConcurrency": 16, "maxWaitSeconds": 10},
        "tenants": [{"name": "gold", "weight": 3}, {"name": "free"}],
    }})
    cfg = parse_config(router_config(spec))
    assert cfg.fair_queuing == QueuePolicy(backend_concurrency=16, max_wait_seconds=10.0)
    assert (cfg.tenancy.limits_for("gold").weight, cfg.tenancy.limits_for("free").weight) == (3, 1)
    assert parse_config(router_config(parse("demo", "team", {}))).fair_queuing.backend_concurrency == 0
