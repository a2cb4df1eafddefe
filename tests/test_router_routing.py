"""The routing strategy: its configuration, the pure choice, the key admission computes, and the
router app over real sockets sending repeat images to one backend and spilling under load."""

from __future__ import annotations

import base64
import io
import json
import random

import pytest
from PIL import Image
from pixtral_runtime.router import admission, scan
from pixtral_runtime.router.affinity import affinity_key, choose_affine_backend, leading_text
from pixtral_runtime.router.choice import choose, choose_affine, choose_backend, choose_round_robin
from pixtral_runtime.router.config import (
    IMAGE_AFFINITY,
    LEAST_OUTSTANDING,
    ROUND_ROBIN,
    AdmissionPolicy,
    ConfigError,
    parse_config,
)
from test_router_app import AUTH, Upstream, config, free_port, metric, router, serve

pytestmark = pytest.mark.timeout(60)
BASE = {"backends": {"stable": ["http://127.0.0.1:9000"]}}


# ---- configuration -------------------------------------------------------------------------------

def test_routing_defaults_to_least_outstanding() -> None:
    routing = parse_config(BASE).routing
    assert routing.strategy == LEAST_OUTSTANDING and routing.epsilon == 0.25


def test_routing_parses_affinity_and_epsilon() -> None:
    routing = parse_config({**BASE, "routing": {"strategy": "imageAffinity", "epsilon": 0.5}}).routing
    assert routing.strategy == IMAGE_AFFINITY and routing.epsilon == 0.5
    assert parse_config({**BASE, "routing": {"strategy": "roundRobin"}}).routing.strategy == ROUND_ROBIN


@pytest.mark.parametrize(("routing", "message"), [
    ({"strategy": "random"},
     "config.json.routing.strategy must be one of leastOutstanding, imageAffinity, roundRobin, got 'random'"),
    ({"strategy": 3}, "config.json.routing.strategy must be a non-empty string"),
    ({"epsilon": 0}, "config.json.routing.epsilon must be a number in [0.01, 10.0], got 0"),
    ({"epsilon": 11}, "config.json.routing.epsilon must be a number in [0.01, 10.0]"),
    ({"epsilon": True}, "config.json.routing.epsilon must be a number"),
    ("fast", "config.json.routing must be an object"),
])
def test_bad_routing_is_named(routing, message) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({**BASE, "routing": routing})
    assert str(info.value).startswith(message)


# ---- the pure choice -----------------------------------------------------------------------------

READY = {"stable": ("http://a:1", "http://b:1", "http://c:1"), "canary": ("http://d:1",)}


def test_without_a_key_the_choice_is_least_outstanding() -> None:
    outstanding = {"http://a:1": 3, "http://b:1": 0, "http://c:1": 2}
    for seed in range(20):
        got = choose("stable", READY, outstanding, random.Random(seed), ())
        assert got == choose_backend("stable", READY, outstanding, random.Random(seed), ()) == ("stable", "http://b:1")


def test_with_a_key_the_choice_follows_the_ring_and_skips_excluded_backends() -> None:
    key = 12345
    home = choose_affine_backend(key, READY["stable"], {})
    assert choose("stable", READY, {}, random.Random(0), (), key=key, strategy=IMAGE_AFFINITY) == ("stable", home)
    second = choose("stable", READY, {}, random.Random(0), (home,), key=key, strategy=IMAGE_AFFINITY)
    assert second is not None and second[1] != home and second[0] == "stable"
    # A retry walks on along the ring: the same as the ring's choice among the others.
    others = [b for b in READY["stable"] if b != home]
    assert second[1] == choose_affine_backend(key, others, {})


def test_affine_choice_falls_back_to_the_other_track() -> None:
    assert choose_affine("stable", READY, {}, 7, exclude=READY["stable"]) == ("canary", "http://d:1")
    assert choose_affine("stable", READY, {}, 7, exclude=(*READY["stable"], "http://d:1")) is None


def test_affine_choice_honours_the_load_bound() -> None:
    key = 99
    home = choose_affine_backend(key, READY["stable"], {})
    busy = {home: 4}
    # total 4 (+1) over 3 backends, epsilon 0.25: at most ceil(1.25 * 5 / 3) = 3 per backend.
    spilled = choose("stable", READY, busy, random.Random(0), (), key=key, epsilon=0.25, strategy=IMAGE_AFFINITY)
    assert spilled is not None and spilled[1] != home
    # A loose bound keeps it home.
    assert choose("stable", READY, busy, random.Random(0), (), key=key, epsilon=10.0,
                  strategy=IMAGE_AFFINITY) == ("stable", home)


def test_a_key_is_ignored_by_the_other_strategies() -> None:
    outstanding = {"http://a:1": 3, "http://b:1": 0, "http://c:1": 2}
    # A key whose home under imageAffinity is not the least loaded backend.
    key = next(k << 56 for k in range(256)
               if choose_affine_backend(k << 56, READY["stable"], outstanding, 10.0) != "http://b:1")
    assert choose("stable", READY, outstanding, random.Random(0), (), key=key, epsilon=10.0,
                  strategy=LEAST_OUTSTANDING) == ("stable", "http://b:1")
    assert [choose("stable", READY, outstanding, random.Random(0), (), key=key, strategy=ROUND_ROBIN, turn=t)
            for t in range(3)] == [("stable", b) for b in READY["stable"]]


def test_round_robin_takes_backends_in_turn_whatever_their_load() -> None:
    busy = {"http://a:1": 50}
    picks = [choose("stable", READY, busy, random.Random(0), (), strategy=ROUND_ROBIN, turn=t)[1] for t in range(7)]
    assert picks == ["http://a:1", "http://b:1", "http://c:1"] * 2 + ["http://a:1"]


def test_round_robin_skips_excluded_backends_and_falls_back_to_the_other_track() -> None:
    assert [choose_round_robin("stable", READY, t, ("http://b:1",))[1] for t in range(4)] == [
        "http://a:1", "http://c:1", "http://a:1", "http://c:1"]
    assert choose_round_robin("stable", READY, 5, READY["stable"]) == ("canary", "http://d:1")
    assert choose_round_robin("stable", READY, 5, (*READY["stable"], "http://d:1")) is None
    assert choose_round_robin("canary", {"stable": ("http://a:1",)}, 0) == ("stable", "http://a:1")


def test_an_unknown_strategy_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown routing strategy 'random'"):
        choose("stable", READY, {}, random.Random(0), (), strategy="random")


# ---- the key admission computes ------------------------------------------------------------------

def png(seed: int, size: int = 8) -> str:
    img = Image.new("RGB", (size, size), (seed % 256, seed // 256 % 256, 7))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def noisy_png(seed: int, side: int = 200) -> str:
    """A PNG that compresses badly: its data URL is longer than scan.BIG_STRING_BYTES."""
    rng = random.Random(seed)
    img = Image.frombytes("RGB", (side, side), bytes(rng.getrandbits(8) for _ in range(side * side * 3)))
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=0)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def chat(url: str, text: str = "describe it", **extra) -> dict:
    return {"model": "tiny", "messages": [{"role": "user", "content": [
        {"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": url}}]}], **extra}


def test_admission_key_is_the_affinity_key_of_the_images_and_text() -> None:
    body = chat(png(1), "what is this")
    key = admission.admit_request("chat", json.dumps(body).encode(), AdmissionPolicy(), affinity=True).key
    assert key == affinity_key([png(1)], leading_text(body)) and key is not None
    other = admission.admit_request("chat", json.dumps(chat(png(2), "what is this")).encode(),
                                          AdmissionPolicy(), affinity=True).key
    assert other != key
    # Without the strategy no key is computed; text-only requests have none.
    assert admission.admit_request("chat", json.dumps(body).encode(), AdmissionPolicy())[2] is None
    text_only = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}
    assert admission.admit_request("chat", json.dumps(text_only).encode(), AdmissionPolicy(), affinity=True)[2] is None


def test_a_large_image_keys_the_same_whether_cut_out_by_scan_or_not() -> None:
    url = noisy_png(3)
    assert len(url) > scan.BIG_STRING_BYTES
    body = chat(url)
    raw = json.dumps(body).encode()
    assert scan.shrink(raw) is not None  # the large-body path is the one under test
    key = admission.admit_request("chat", raw, AdmissionPolicy(), affinity=True).key
    assert key == affinity_key([url], leading_text(body))


# ---- the router app ------------------------------------------------------------------------------

def affine_config(backends: list[str], **routing) -> dict:
    return config({"stable": backends}, routing={"strategy": "imageAffinity", **routing})


async def test_repeat_images_land_on_one_backend_and_distinct_ones_spread() -> None:
    ups = [Upstream(name) for name in "abc"]
    async with serve(ups[0].app) as a, serve(ups[1].app) as b, serve(ups[2].app) as c:
        async with router(affine_config([a, b, c])) as client:
            served = set()
            for _ in range(12):
                r = await client.post("/v1/chat/completions", json=chat(png(1)), headers=AUTH)
                assert r.status_code == 200
                served.add(r.json()["served_by"])
            assert len(served) == 1
            spread = set()
            for seed in range(30):
                r = await client.post("/v1/chat/completions", json=chat(png(100 + seed)), headers=AUTH)
                spread.add(r.json()["served_by"])
            assert spread == {"a", "b", "c"}


async def test_least_outstanding_spreads_repeat_images() -> None:
    ups = [Upstream(name) for name in "abc"]
    async with serve(ups[0].app) as a, serve(ups[1].app) as b, serve(ups[2].app) as c:
        async with router(config({"stable": [a, b, c]})) as client:
            client.app.state.rng.seed(5)
            served = set()
            for _ in range(12):
                r = await client.post("/v1/chat/completions", json=chat(png(1)), headers=AUTH)
                served.add(r.json()["served_by"])
            assert len(served) > 1


async def test_round_robin_alternates_backends_through_the_app() -> None:
    ups = [Upstream(name) for name in "ab"]
    async with serve(ups[0].app) as a, serve(ups[1].app) as b:
        async with router(config({"stable": [a, b]}, routing={"strategy": "roundRobin"})) as client:
            served = []
            for _ in range(6):
                r = await client.post("/v1/chat/completions", json=chat(png(1)), headers=AUTH)
                assert r.status_code == 200
                served.append(r.json()["served_by"])
            # Strictly alternating, starting wherever the counter stood.
            assert served in (["a", "b"] * 3, ["b", "a"] * 3)


async def test_a_busy_home_backend_spills_and_gets_its_key_back_when_free() -> None:
    ups = {name: Upstream(name) for name in "abc"}
    async with serve(ups["a"].app) as a, serve(ups["b"].app) as b, serve(ups["c"].app) as c:
        async with router(affine_config([a, b, c], epsilon=0.25)) as client:
            r = await client.post("/v1/chat/completions", json=chat(png(1)), headers=AUTH)
            home = r.json()["served_by"]
            # One stream held open on the home backend: with 3 backends and epsilon 0.25 the bound
            # for the next request is ceil(1.25 * 2 / 3) = 1, so the next one must go elsewhere.
            async with client.stream("POST", "/v1/chat/completions", headers=AUTH,
                                     json=chat(png(1), mode="gated-stream")) as held:
                assert held.status_code == 200
                assert held.headers["x-pixtral-backend"] in (a, b, c)
                held_on = {a: "a", b: "b", c: "c"}[held.headers["x-pixtral-backend"]]
                assert held_on == home
                r = await client.post("/v1/chat/completions", json=chat(png(1)), headers=AUTH)
                assert r.status_code == 200 and r.json()["served_by"] != home
                ups[home].release_stream.set()
                await held.aread()
            r = await client.post("/v1/chat/completions", json=chat(png(1)), headers=AUTH)
            assert r.json()["served_by"] == home


async def test_a_refused_home_backend_is_retried_on_the_next_one_of_the_ring() -> None:
    up = Upstream("live")
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    async with serve(up.app) as live, router(affine_config([dead, live])) as client:
        # An image whose home is the dead backend (about half of them are).
        for seed in range(64):
            body = chat(png(seed))
            key = affinity_key([png(seed)], leading_text(body))
            if choose_affine_backend(key, [dead, live], {}) == dead:
                break
        else:
            raise AssertionError("no image keyed to the dead backend in 64 tries")
        r = await client.post("/v1/chat/completions", json=body, headers=AUTH)
        assert r.status_code == 200 and r.json()["served_by"] == "live"
        m = (await client.get("/metrics")).text
        assert metric(m, "pixtral_router_upstream_retries_total", track="stable") == 1
        assert len(up.requests) == 1



async def test_a_fresh_image_goes_to_the_less_busy_backend_and_its_repeats_follow_it() -> None:
    ups = {name: Upstream(name) for name in "ab"}
    async with serve(ups["a"].app) as a, serve(ups["b"].app) as b:
        async with router(affine_config([a, b], epsilon=0.25)) as client:
            names = {a: "a", b: "b"}
            # Hold one stream on some backend, then send fresh images until one's home is that
            # busy backend: with 2 backends holding 1 and 0, a repeat could still use its home
            # (bound ceil(1.25 * 2 / 2) = 2), a first sighting may not (bound 1).
            async with client.stream("POST", "/v1/chat/completions", headers=AUTH,
                                     json=chat(png(1000), mode="gated-stream")) as held:
                assert held.status_code == 200
                busy = names[held.headers["x-pixtral-backend"]]
                idle = "b" if busy == "a" else "a"
                placed = []
                for seed in range(16):
                    r = await client.post("/v1/chat/completions", json=chat(png(seed)), headers=AUTH)
                    assert r.status_code == 200
                    placed.append((seed, r.json()["served_by"]))
                # Every fresh image went to the idle backend while the other held a stream.
                assert {served for _, served in placed} == {idle}, placed
                ups[busy].release_stream.set()
                await held.aread()
            # Both idle now: each image goes back where it was first placed, not to its ring home.
            for seed, first in placed:
                r = await client.post("/v1/chat/completions", json=chat(png(seed)), headers=AUTH)
                assert r.json()["served_by"] == first
