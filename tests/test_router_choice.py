"""Track and backend choice: statistics of the weighted split, stickiness, override, least-outstanding."""

from __future__ import annotations

import math
import random

import pytest
from pixtral_runtime.router.choice import (
    CANARY,
    STABLE,
    choose_backend,
    choose_track,
    parse_override,
    sticky_bucket,
)
from pixtral_runtime.router.errors import InvalidRequest


def binomial_bounds(n: int, p: float, sigmas: float = 5.0) -> tuple[float, float]:
    """Acceptance interval for a Binomial(n, p) count: mean +- `sigmas` standard deviations."""
    mean = n * p
    sd = math.sqrt(n * p * (1 - p))
    return mean - sigmas * sd, mean + sigmas * sd


@pytest.mark.parametrize("weight", [1, 20, 50, 80, 99])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weighted_split_is_within_binomial_bounds(weight: int, seed: int) -> None:
    rng = random.Random(seed)
    n = 20_000
    canary = sum(choose_track(canary_weight=weight, rng=rng) == CANARY for _ in range(n))
    low, high = binomial_bounds(n, weight / 100)
    assert low <= canary <= high, f"{canary} canary of {n} at weight {weight}: outside [{low:.0f}, {high:.0f}]"


def test_weight_zero_and_hundred_are_absolute() -> None:
    rng = random.Random(7)
    assert {choose_track(canary_weight=0, rng=rng) for _ in range(1000)} == {STABLE}
    assert {choose_track(canary_weight=100, rng=rng) for _ in range(1000)} == {CANARY}


def test_sticky_callers_always_land_on_the_same_track() -> None:
    rng = random.Random(3)
    for i in range(500):
        caller = f"user-{i}".encode()
        tracks = {choose_track(canary_weight=20, rng=rng, sticky_value=caller) for _ in range(20)}
        assert len(tracks) == 1, f"{caller!r} moved between tracks: {tracks}"


def test_sticky_population_follows_the_weight() -> None:
    rng = random.Random(0)
    n = 20_000
    canary = sum(choose_track(canary_weight=20, rng=rng, sticky_value=f"session-{i}".encode()) == CANARY
                 for i in range(n))
    low, high = binomial_bounds(n, 0.2)
    assert low <= canary <= high


def test_raising_the_weight_only_moves_callers_to_the_canary() -> None:
    rng = random.Random(0)
    callers = [f"c{i}".encode() for i in range(2000)]
    at20 = {c for c in callers if choose_track(canary_weight=20, rng=rng, sticky_value=c) == CANARY}
    at50 = {c for c in callers if choose_track(canary_weight=50, rng=rng, sticky_value=c) == CANARY}
    assert at20 <= at50 and len(at50) > len(at20)


def test_sticky_hash_is_stable_across_processes() -> None:
    # A fixed value, not Python's salted hash(): every replica and restart agrees.
    assert sticky_bucket(b"user-42") == sticky_bucket("user-42")
    assert 0 <= sticky_bucket(b"user-42") < 100
    assert sticky_bucket(b"user-42") == pytest.approx(int.from_bytes(
        __import__("hashlib").sha256(b"user-42").digest()[:8], "big") % 10_000 / 100)


def test_override_pins_a_track_regardless_of_weight_and_stickiness() -> None:
    rng = random.Random(0)
    assert choose_track(canary_weight=0, rng=rng, override=CANARY) == CANARY
    assert choose_track(canary_weight=100, rng=rng, override=STABLE, sticky_value=b"x") == STABLE
    assert parse_override(b" Canary ", "x-pixtral-track") == CANARY
    assert parse_override(None, "x-pixtral-track") is None
    with pytest.raises(InvalidRequest, match="x-pixtral-track must be 'stable' or 'canary'"):
        parse_override(b"blue", "x-pixtral-track")


def test_backend_choice_prefers_fewest_outstanding() -> None:
    ready = {STABLE: ["a", "b", "c"], CANARY: ["z"]}
    rng = random.Random(0)
    assert choose_backend(STABLE, ready, {"a": 3, "b": 1, "c": 2}, rng) == (STABLE, "b")
    assert choose_backend(CANARY, ready, {"z": 50}, rng) == (CANARY, "z")


def test_backend_ties_are_broken_randomly_and_evenly() -> None:
    ready = {STABLE: ["a", "b", "c"]}
    rng = random.Random(1)
    n = 9000
    counts = {"a": 0, "b": 0, "c": 0}
    for _ in range(n):
        counts[choose_backend(STABLE, ready, {"a": 1, "b": 1, "c": 1}, rng)[1]] += 1
    low, high = binomial_bounds(n, 1 / 3)
    assert all(low <= c <= high for c in counts.values()), counts
    # Only the least loaded are candidates.
    assert {choose_backend(STABLE, ready, {"a": 0, "b": 0, "c": 5}, rng)[1] for _ in range(200)} == {"a", "b"}


def test_backend_choice_falls_back_to_the_other_track_then_none() -> None:
    rng = random.Random(0)
    assert choose_backend(CANARY, {STABLE: ["s1"], CANARY: []}, {}, rng) == (STABLE, "s1")
    assert choose_backend(STABLE, {STABLE: [], CANARY: ["c1"]}, {}, rng) == (CANARY, "c1")
    assert choose_backend(STABLE, {STABLE: [], CANARY: []}, {}, rng) is None
    assert choose_backend(STABLE, {}, {}, rng) is None


def test_backend_choice_skips_excluded_backends() -> None:
    rng = random.Random(0)
    ready = {STABLE: ["s1", "s2"], CANARY: ["c1"]}
    assert choose_backend(STABLE, ready, {"s2": 9}, rng, exclude={"s1"}) == (STABLE, "s2")
    assert choose_backend(STABLE, ready, {}, rng, exclude={"s1", "s2"}) == (CANARY, "c1")
    assert choose_backend(STABLE, ready, {}, rng, exclude={"s1", "s2", "c1"}) is None
