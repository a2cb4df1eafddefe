"""Routing decisions as pure functions: which track, then which backend of it.

Inputs (weights, ready backends, outstanding counts, the RNG) are passed in, so the tests can
check the statistics with a seeded `random.Random` and the proxy stays a thin shell around them.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Collection, Mapping, Sequence

from .affinity import DEFAULT_EPSILON, choose_affine_backend
from .config import CANARY, IMAGE_AFFINITY, LEAST_OUTSTANDING, ROUND_ROBIN, ROUTING_STRATEGIES, STABLE
from .errors import InvalidRequest

__all__ = ["CANARY", "STABLE", "choose", "choose_affine", "choose_backend", "choose_round_robin", "choose_track",
           "parse_override", "sticky_bucket"]


def sticky_bucket(value: bytes | str) -> float:
    """A caller's fixed position on [0, 100), from a stable hash of the sticky header value.

    sha256 rather than Python's `hash()` (salted per process): every router replica and every
    restart puts the same caller at the same place. A caller is on the canary while its position
    is below the weight, so raising the weight only ever moves callers stable -> canary.
    """
    raw = value.encode() if isinstance(value, str) else value
    return int.from_bytes(hashlib.sha256(raw).digest()[:8], "big") % 10_000 / 100.0


def parse_override(value: bytes | None, header: str) -> str | None:
    if value is None:
        return None
    track = value.decode("latin-1").strip().lower()
    if track in (STABLE, CANARY):
        return track
    raise InvalidRequest(
        f"Header {header} must be {STABLE!r} or {CANARY!r}, got {track[:40]!r}.", param=header, code="invalid_track"
    )


def choose_track(
    *, canary_weight: float, rng: random.Random, sticky_value: bytes | None = None, override: str | None = None
) -> str:
    """stable or canary: the override if given, else by sticky hash, else a weighted draw."""
    if override is not None:
        return override
    if canary_weight <= 0:
        return STABLE
    if canary_weight >= 100:
        return CANARY
    position = sticky_bucket(sticky_value) if sticky_value else rng.random() * 100.0
    return CANARY if position < canary_weight else STABLE


def other_track(track: str) -> str:
    return CANARY if track == STABLE else STABLE


def choose_backend(
    track: str,
    ready: Mapping[str, Sequence[str]],
    outstanding: Mapping[str, int],
    rng: random.Random,
    exclude: Collection[str] = (),
) -> tuple[str, str] | None:
    """(track, backend) with the fewest outstanding requests, ties broken at random.

    Falls back to the other track when the chosen one has no usable backend; None when neither has.
    """
    for candidate_track in (track, other_track(track)):
        best: list[str] = []
        best_load = 0
        for backend in ready.get(candidate_track, ()):
            if backend in exclude:
                continue
            load = outstanding.get(backend, 0)
            if not best or load < best_load:
                best, best_load = [backend], load
            elif load == best_load:
                best.append(backend)
        if best:
            return candidate_track, best[0] if len(best) == 1 else rng.choice(best)
    return None


def choose_affine(
    track: str,
    ready: Mapping[str, Sequence[str]],
    outstanding: Mapping[str, int],
    key: int,
    epsilon: float = DEFAULT_EPSILON,
    exclude: Collection[str] = (),
    *,
    remembered: str | None = None,
    first_sighting: bool = False,
) -> tuple[str, str] | None:
    """(track, backend) for a request with an affinity key: its backend by consistent hashing with
    bounded loads (`affinity.choose_affine_backend`, with where the key was first placed) among the track's
    usable backends, the other track's when the chosen one has none; None when neither has."""
    for candidate_track in (track, other_track(track)):
        backend = choose_affine_backend(key, ready.get(candidate_track, ()), outstanding, epsilon, exclude,
                                        remembered=remembered, first_sighting=first_sighting)
        if backend is not None:
            return candidate_track, backend
    return None


def choose_round_robin(
    track: str,
    ready: Mapping[str, Sequence[str]],
    turn: int,
    exclude: Collection[str] = (),
) -> tuple[str, str] | None:
    """(track, backend) for the `turn`-th pick: the track's usable backends in turn, whatever their
    load (the baseline the other strategies are measured against, docs/benchmarks.md); the other
    track's when the chosen one has none; None when neither has. The caller counts the turns."""
    for candidate_track in (track, other_track(track)):
        usable = [backend for backend in ready.get(candidate_track, ()) if backend not in exclude]
        if usable:
            return candidate_track, usable[turn % len(usable)]
    return None


def choose(
    track: str,
    ready: Mapping[str, Sequence[str]],
    outstanding: Mapping[str, int],
    rng: random.Random,
    exclude: Collection[str] = (),
    *,
    key: int | None = None,
    epsilon: float = DEFAULT_EPSILON,
    strategy: str = LEAST_OUTSTANDING,
    turn: int = 0,
    remembered: str | None = None,
    first_sighting: bool = False,
) -> tuple[str, str] | None:
    """The backend for one attempt under `strategy`: roundRobin by `turn`; imageAffinity by the
    request's key when it has one (admission computes it only under that strategy, and only for a
    chat request with images), else by least outstanding requests."""
    if strategy not in ROUTING_STRATEGIES:
        raise ValueError(f"unknown routing strategy {strategy!r}; expected one of {', '.join(ROUTING_STRATEGIES)}")
    if strategy == ROUND_ROBIN:
        return choose_round_robin(track, ready, turn, exclude)
    if strategy == IMAGE_AFFINITY and key is not None:
        return choose_affine(track, ready, outstanding, key, epsilon, exclude,
                             remembered=remembered, first_sighting=first_sighting)
    return choose_backend(track, ready, outstanding, rng, exclude)
