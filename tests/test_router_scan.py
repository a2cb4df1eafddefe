"""The long-literal path of admission (scan.py) decides exactly as parsing the whole body does."""

from __future__ import annotations

import base64
import io
import json
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pixtral_runtime.router import admission, scan
from pixtral_runtime.router.config import AdmissionPolicy
from pixtral_runtime.router.errors import AdmissionError

POLICY = AdmissionPolicy(images_per_prompt=2, max_image_bytes=400_000, max_image_pixels=512 * 512)


def _noise_png(width: int, height: int) -> str:
    rng = random.Random(width * 7919 + height)
    image = Image.frombytes("RGB", (width, height), bytes(rng.getrandbits(8) for _ in range(width * height * 3)))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


BIG_OK = _noise_png(160, 160)  # ~100 KB of base64: a long literal
BIG_TOO_MANY_PIXELS = _noise_png(600, 150)
BIG_TOO_LARGE = _noise_png(400, 400)
assert min(len(BIG_OK), len(BIG_TOO_MANY_PIXELS)) > scan.BIG_STRING_BYTES


def _whole(body: bytes) -> tuple[str, list[str]] | str:
    data = admission.parse_json_body(body)
    return admission.check_images(data, POLICY)


def _outcome(fn, body: bytes):
    try:
        return ("ok", fn(body))
    except AdmissionError as exc:
        return (exc.reason, exc.param)


def _reduced(body: bytes):
    return admission.admit_body("chat", body, POLICY)[1]


def _chat(*parts, text: str = "hi") -> bytes:
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": text},
                                                                                 *parts]}]}).encode()


@pytest.mark.parametrize("body", [
    _chat({"type": "image_url", "image_url": {"url": BIG_OK}}),
    _chat({"image_url": BIG_OK}, {"type": "input_image", "image_url": BIG_OK}),
    _chat({"image_url": BIG_OK}, {"image_url": BIG_OK}, {"image_url": BIG_OK}),  # too many
    _chat({"type": "image_url", "image_url": {"url": BIG_TOO_MANY_PIXELS}}),
    _chat({"type": "image_url", "image_url": {"url": BIG_TOO_LARGE}}),
    _chat({"type": "image_url", "image_url": {"url": "file://" + "x" * 70_000}}),
    _chat({"type": "image_url", "image_url": {"url": "https://example.com/" + "x" * 70_000}}),
    _chat({"type": "image_url", "image_url": {"url": BIG_OK[:-10] + "!!!!!!!!!!"}}),  # bad base64 tail... decoded lazily
    _chat({"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 70_000}}),  # not an image
    _chat({"type": "audio_url", "audio_url": {"url": BIG_OK}}),
    _chat({"type": "image_url", "image_url": {"url": BIG_OK}}, text='say "quoted" \\ and \\"escaped\\"'),
    _chat({"type": "text", "text": "y" * 70_000}),
    _chat({"type": "text", "text": "a \\\" long escaped " + "z" * 70_000}),
    b'{"model": "m", "messages": [{"role": "user", "content": [{"image_url": "' + BIG_OK.encode() + b'"}]}',
    b'{"messages": "' + b"q" * 70_000 + b'"}',
])
def test_the_reduced_parse_decides_as_the_whole_parse(body: bytes) -> None:
    assert _outcome(_reduced, body) == _outcome(_whole, body)


def test_long_literals_are_cut_out_and_the_rest_is_small() -> None:
    body = _chat({"type": "image_url", "image_url": {"url": BIG_OK}}, {"image_url": BIG_OK})
    reduced = scan.shrink(body)
    assert reduced is not None
    document, big = reduced
    assert len(document) < 500 and len(big) == 2
    assert all(bytes(v) == BIG_OK.encode() for v in big.values())


def test_what_is_not_reduced_is_parsed_whole() -> None:
    assert scan.shrink(b'{"a": 1}') is None  # small
    assert scan.shrink(json.dumps({"a": "\\" + "x" * 70_000}).encode()) is None  # an escape inside
    assert scan.shrink(json.dumps(["s"] * (scan.MAX_STRINGS + 1) + ["x" * 70_000]).encode()) is None
    assert scan.shrink(b'{"a": "' + b"x" * 70_000) is None  # unterminated


_small = st.recursive(
    st.one_of(st.none(), st.integers(), st.text(alphabet='ab"\\\u00e9 ', max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(["url", "image_url", "type",
                                                                                          "text", "x"]), inner,
                                                                         max_size=3)),
    max_leaves=8,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(noise=_small, url=st.sampled_from([BIG_OK, BIG_TOO_MANY_PIXELS, "data:image/png;base64," + "B" * 70_001]),
       shape=st.sampled_from(["typed", "untyped", "input_image", "text"]), count=st.integers(1, 3),
       cut=st.integers(0, 40))
def test_reduced_and_whole_agree_on_random_bodies(noise, url: str, shape: str, count: int, cut: int) -> None:
    part = {"typed": {"type": "image_url", "image_url": {"url": url}}, "untyped": {"image_url": url},
            "input_image": {"type": "input_image", "image_url": url}, "text": {"type": "text", "text": url}}[shape]
    body = json.dumps({"model": "m", "noise": noise,
                       "messages": [{"role": "user", "content": [part] * count, "extra": noise}]}).encode()
    if cut:
        body = body[:-cut]  # truncated bodies too: both must refuse them alike
    assert _outcome(_reduced, body) == _outcome(_whole, body)
