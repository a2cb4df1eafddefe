"""Affinity routing as pure functions: requests that carry the same images and open with the same
text go to the backend that already holds them in vLLM's caches (the multimodal processor cache
and the prefix cache, image tokens included), by consistent hashing with bounded loads.

Consistent hashing (each backend owns many points on a ring; a key goes to the first point at or
after its hash) keeps a key on one backend while backends come and go: adding one of n moves about
1/n of the keys. Bounded loads (Mirrokni, Thorup, Zadimoghaddam, 2018) caps every backend at
ceil((1 + epsilon) * mean load): a key whose backend is full walks on to the next one, so a hot
image cannot pile its traffic on one replica. epsilon trades cache hits (large) for balance (small).

The key hashes the prompt prefix that vLLM's caches can share: the text before the first image
(a system prompt, an instruction), then the first image's payload (a data URL's base64 text, or
the URL itself). What follows the first image is left out on purpose: the question asked about an
image, the answers and the later turns of a conversation, and further images differ from request
to request, and keying on them would scatter the requests of one image over every backend (each
missing the cache once), while the prefix through the first image is exactly what the prefix cache
matches and the first image is what the multimodal cache holds. So every turn of a conversation,
and every user asking about the same image under the same instructions, lands on one backend. A
request without an image has no key and is routed by least outstanding requests
(`choice.choose_backend`).
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

# Points per backend on the ring: with 64, the share of keys a backend owns stays within about
# +-20% of 1/n for the handful of replicas a track runs (tests/test_router_affinity.py measures it).
POINTS_PER_BACKEND = 64
# Leading text (before the first image) that goes into the key: enough to tell system prompts and
# instructions apart, little enough that hashing stays cheap for long prompts.
LEADING_TEXT_CHARS = 512
DEFAULT_EPSILON = 0.25


def _point(data: bytes) -> int:
    # sha256, not hash(): every router replica and restart puts a key at the same place.
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "big")


class _FirstImage(Exception):
    """Raised by `_texts` at the first image part: the leading text ends there."""


def _texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        return []
    texts = []
    for part in content:
        if not isinstance(part, Mapping):
            continue
        if part.get("type") == "image_url" or "image_url" in part:
            raise _FirstImage(texts)
        if isinstance(part.get("text"), str):
            texts.append(part["text"])
    return texts


def leading_text(body: Mapping[str, Any]) -> str:
    """The request's text before its first image, in message order, at most LEADING_TEXT_CHARS
    characters (all of its text when it has no image)."""
    pieces: list[str] = []
    size = 0
    for message in body.get("messages") or ():
        try:
            texts = _texts(message.get("content") if isinstance(message, Mapping) else None)
            stop = False
        except _FirstImage as first:
            texts, stop = first.args[0], True
        for text in texts:
            pieces.append(text)
            size += len(text)
            if size >= LEADING_TEXT_CHARS:
                return "".join(pieces)[:LEADING_TEXT_CHARS]
        if stop:
            break
    return "".join(pieces)


def _payload(url: str | bytes | memoryview) -> bytes | memoryview:
    """What the key hashes of one image URL: a data URL's payload, any other URL whole. A long
    data URL comes as the bytes of its literal (`scan.py`), hashed in place; both forms of one
    URL give the same bytes (base64 is ASCII)."""
    if isinstance(url, str):
        return (url.partition(",")[2] if url.startswith("data:") else url).encode("latin-1", "replace")
    view = memoryview(url)
    if bytes(view[:5]) == b"data:":
        comma = bytes(view[:1024]).find(b",")  # media type and parameters come before it
        return view[comma + 1:] if comma >= 0 else view[len(view):]
    return view


def affinity_key(image_urls: Iterable[str | bytes | memoryview], text: str) -> int | None:
    """The request's place on the ring, from its first image URL (admission passes them all, in
    order) and its leading text (`leading_text`); None when it has no image: text-only requests
    gain little from affinity and would crowd the image requests' backends."""
    first = next(iter(image_urls), None)
    if first is None:
        return None
    digest = hashlib.sha256(text.encode("utf-8", "replace") + b"\0image\0")
    digest.update(_payload(first))
    return int.from_bytes(digest.digest()[:8], "big")


class Ring:
    """The points of a fixed set of backends, sorted."""

    __slots__ = ("backends", "owners", "points")

    def __init__(self, backends: Sequence[str], points_per_backend: int = POINTS_PER_BACKEND):
        pairs = sorted((_point(f"{backend}#{i}".encode()), backend)
                       for backend in backends for i in range(points_per_backend))
        self.points = [p for p, _ in pairs]
        self.owners = [b for _, b in pairs]
        self.backends = tuple(sorted(set(backends)))

    def walk(self, key: int) -> Iterable[str]:
        """Distinct backends in ring order from the key's position."""
        if not self.points:
            return
        start = bisect.bisect_left(self.points, key)
        seen: set[str] = set()
        for i in range(len(self.points)):
            owner = self.owners[(start + i) % len(self.points)]
            if owner not in seen:
                seen.add(owner)
                yield owner
                if len(seen) == len(self.backends):
                    return


@functools.lru_cache(maxsize=128)
def ring_for(backends: tuple[str, ...]) -> Ring:
    """One ring per backend set (the set changes only when pods come and go)."""
    return Ring(backends)


def capacity(total_outstanding: int, backends: int, epsilon: float) -> int:
    """The most requests one backend may hold once this one is placed."""
    return max(1, math.ceil((1 + epsilon) * (total_outstanding + 1) / backends))


def choose_affine_backend(
    key: int,
    backends: Sequence[str],
    outstanding: Mapping[str, int],
    epsilon: float = DEFAULT_EPSILON,
    exclude: Collection[str] = (),
    *,
    remembered: str | None = None,
    first_sighting: bool = False,
) -> str | None:
    """The backend for a request with affinity key `key`; None when no backend is usable (all
    excluded).

    `remembered`: where this router first placed the key (`placements.Placements`); it is kept while
    its load stays within the bound. Otherwise the first backend in ring order from `key` within the
    bound. A `first_sighting` (a key the router does not remember) can hit no cache, so its bound
    has no slack (epsilon 0): fresh images are placed as evenly as least outstanding places them,
    ring order breaking the ties."""
    usable = tuple(sorted(b for b in backends if b not in exclude))
    if not usable:
        return None
    total = sum(outstanding.get(b, 0) for b in usable)
    if remembered in usable and outstanding.get(remembered, 0) + 1 <= capacity(total, len(usable), epsilon):
        return remembered
    limit = capacity(total, len(usable), 0.0 if first_sighting else epsilon)
    for backend in ring_for(usable).walk(key):
        if outstanding.get(backend, 0) + 1 <= limit:
            return backend
    # Unreachable: some backend holds at most the mean load, which is below the bound.
    return min(usable, key=lambda b: outstanding.get(b, 0))
