"""Affinity routing (runtime/router/affinity.py): the key, the ring's spread and stability, and the
load bound, as examples and properties."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st
from pixtral_runtime.router import affinity as A

BACKENDS = ("10.88.0.11:8000", "10.88.0.12:8000", "10.88.0.13:8000", "10.88.0.14:8000")


def data_url(payload: str, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{payload}"


def test_same_images_and_text_give_the_same_key_and_backend():
    key = A.affinity_key([data_url("AAAA"), data_url("BBBB")], "Describe")
    assert key == A.affinity_key([data_url("AAAA"), data_url("BBBB")], "Describe")
    assert A.choose_affine_backend(key, BACKENDS, {}) == A.choose_affine_backend(key, BACKENDS, {})


def test_the_key_is_the_leading_text_and_the_first_image():
    base = A.affinity_key([data_url("AAAA")], "You are terse.")
    assert A.affinity_key([data_url("AAAB")], "You are terse.") != base
    assert A.affinity_key([data_url("AAAA")], "You are verbose.") != base
    # What follows the first image (more images) is not a shared prefix: it stays out.
    assert A.affinity_key([data_url("AAAA"), data_url("BBBB")], "You are terse.") == base
    assert A.affinity_key([data_url("BBBB"), data_url("AAAA")], "You are terse.") != base
    # The payload is what the caches see; the declared type is not part of it.
    assert A.affinity_key([data_url("AAAA", "image/jpeg")], "You are terse.") == base
    # Text and payload are kept apart: "ab" + image "c" is not "a" + image "bc".
    assert A.affinity_key([data_url("c")], "ab") != A.affinity_key([data_url("bc")], "a")
    assert A.affinity_key(["https://images.example/cat.png"], "") != A.affinity_key(["https://images.example/dog.png"], "")


def test_text_only_requests_have_no_key():
    assert A.affinity_key([], "Hello there") is None


def image(url: str = "x") -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def test_leading_text_is_the_text_before_the_first_image_and_stops_at_the_limit():
    body = {"messages": [
        {"role": "system", "content": "You are terse. "},
        {"role": "user", "content": [{"type": "text", "text": "Look:"}, image(), {"type": "text", "text": "What?"}]},
        {"role": "user", "content": "later"},
    ]}
    assert A.leading_text(body) == "You are terse. Look:"
    # A conversation's turns share their leading text whatever was asked and answered after the image.
    turn1 = {"messages": [{"role": "user", "content": [image(), {"type": "text", "text": "What is this?"}]}]}
    turn2 = {"messages": [*turn1["messages"], {"role": "assistant", "content": "A cat."},
                          {"role": "user", "content": "Which colour?"}]}
    assert A.leading_text(turn1) == A.leading_text(turn2) == ""
    no_image = {"messages": [{"role": "user", "content": "x" * 5000}, {"role": "user", "content": "tail"}]}
    assert A.leading_text(no_image) == "x" * A.LEADING_TEXT_CHARS
    assert A.leading_text({"messages": [{"role": "user", "content": None}, "not a message"]}) == ""


def test_keys_spread_evenly_over_backends():
    rng = random.Random(7)
    counts = dict.fromkeys(BACKENDS, 0)
    for _ in range(20_000):
        counts[A.choose_affine_backend(rng.getrandbits(64), BACKENDS, {}, epsilon=1e9)] += 1
    for backend, count in counts.items():
        assert abs(count / 20_000 - 0.25) <= 0.25 * 0.2, (backend, counts)


def test_removing_a_backend_moves_only_its_keys():
    rng = random.Random(11)
    keys = [rng.getrandbits(64) for _ in range(5_000)]
    before = {k: A.choose_affine_backend(k, BACKENDS, {}) for k in keys}
    remaining = BACKENDS[:3]
    after = {k: A.choose_affine_backend(k, remaining, {}) for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert all(before[k] == BACKENDS[3] for k in moved)
    assert all(after[k] == before[k] for k in keys if before[k] != BACKENDS[3])


def test_a_hot_key_spills_once_its_backend_is_over_the_bound():
    key = A.affinity_key([data_url("HOT")], "")
    home = A.choose_affine_backend(key, BACKENDS, {})
    outstanding = dict.fromkeys(BACKENDS, 0)
    placed = []
    for _ in range(40):
        backend = A.choose_affine_backend(key, BACKENDS, outstanding, epsilon=0.25)
        outstanding[backend] += 1
        placed.append(backend)
    assert placed[0] == home
    assert outstanding[home] <= A.capacity(39, len(BACKENDS), 0.25)
    assert len(set(placed)) > 1


def test_excluded_backends_are_skipped_and_none_when_all_are():
    key = A.affinity_key([data_url("AAAA")], "")
    home = A.choose_affine_backend(key, BACKENDS, {})
    assert A.choose_affine_backend(key, BACKENDS, {}, exclude={home}) not in (home, None)
    assert A.choose_affine_backend(key, BACKENDS, {}, exclude=set(BACKENDS)) is None


backend_sets = st.lists(st.from_regex(r"10\.88\.0\.[0-9]{1,3}:8000", fullmatch=True), min_size=1, max_size=8, unique=True)


@settings(max_examples=300, deadline=None)
@given(backend_sets, st.integers(0, 2**64 - 1), st.data(), st.floats(0.01, 3))
def test_the_choice_never_exceeds_the_bound(backends, key, data, epsilon):
    outstanding = {b: data.draw(st.integers(0, 50)) for b in backends}
    excluded = set(data.draw(st.lists(st.sampled_from(backends), max_size=len(backends) - 1)))
    chosen = A.choose_affine_backend(key, backends, outstanding, epsilon, exclude=excluded)
    usable = [b for b in backends if b not in excluded]
    assert chosen in usable
    assert outstanding[chosen] + 1 <= A.capacity(sum(outstanding[b] for b in usable), len(usable), epsilon)


def test_a_first_sighting_is_placed_as_evenly_as_least_outstanding_would():
    # Two backends holding 2 and 1 requests: with epsilon 0.25 the bound for the next one is
    # ceil(1.25 * 4 / 2) = 3, so a repeat may still go to its home at 2; a fresh key gets no slack
    # (bound ceil(4 / 2) = 2) and goes to the backend with 1.
    key = A.affinity_key([data_url("FRESH")], "")
    two = BACKENDS[:2]
    home = A.choose_affine_backend(key, two, {})
    other = next(b for b in two if b != home)
    loads = {home: 2, other: 1}
    assert A.choose_affine_backend(key, two, loads, 0.25) == home  # a repeat may use the slack
    assert A.choose_affine_backend(key, two, loads, 0.25, first_sighting=True) == other
    # Equal loads: the ring decides, so every router replica places a fresh key alike.
    assert A.choose_affine_backend(key, two, {home: 1, other: 1}, 0.25, first_sighting=True) == home


def test_a_remembered_backend_is_kept_within_the_bound_and_left_beyond_it():
    key = A.affinity_key([data_url("SEEN")], "")
    home = A.choose_affine_backend(key, BACKENDS, {})
    elsewhere = next(b for b in BACKENDS if b != home)
    assert A.choose_affine_backend(key, BACKENDS, {}, remembered=elsewhere) == elsewhere
    # Over the bound (ceil(1.25 * 5 / 4) = 2 with 4 in flight, all on it): back to the ring.
    assert A.choose_affine_backend(key, BACKENDS, {elsewhere: 4}, 0.25, remembered=elsewhere) == home
    # A remembered backend that is gone or excluded is ignored.
    assert A.choose_affine_backend(key, BACKENDS, {}, exclude={elsewhere}, remembered=elsewhere) == home
    assert A.choose_affine_backend(key, BACKENDS, {}, remembered="10.88.0.99:8000") == home


@settings(max_examples=300, deadline=None)
@given(backend_sets, st.integers(0, 2**64 - 1), st.data(), st.floats(0.01, 3))
def test_remembered_or_first_sighting_never_exceeds_the_bound(backends, key, data, epsilon):
    outstanding = {b: data.draw(st.integers(0, 50)) for b in backends}
    remembered = data.draw(st.sampled_from([None, *backends]))
    first = remembered is None and data.draw(st.booleans())
    chosen = A.choose_affine_backend(key, backends, outstanding, epsilon, remembered=remembered, first_sighting=first)
    total = sum(outstanding.values())
    assert outstanding[chosen] + 1 <= A.capacity(total, len(backends), 0.0 if first else epsilon)


def test_placements_remember_the_latest_backend_forget_the_oldest_and_gone_backends():
    from pixtral_runtime.router.placements import Placements

    memory = Placements(capacity=2)
    memory.record(1, "a")
    memory.record(2, "b")
    memory.record(1, "c")  # 1 is now the most recent
    memory.record(3, "a")  # evicts 2, the least recently placed
    assert (memory.get(1), memory.get(2), memory.get(3)) == ("c", None, "a")
    memory.forget_backends({"c"})
    assert (memory.get(1), memory.get(3), len(memory)) == ("c", None, 1)
