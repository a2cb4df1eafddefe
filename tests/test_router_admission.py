"""Admission: each kind of bad request is refused with a reason and a message naming the problem."""

from __future__ import annotations

import base64
import io
import json
import random
import struct
import zlib

import pytest
from PIL import Image
from pixtral_runtime.router import admission
from pixtral_runtime.router.config import AdmissionPolicy
from pixtral_runtime.router.errors import AdmissionError, BodyTooLarge

POLICY = AdmissionPolicy(images_per_prompt=2, max_image_bytes=4096, max_image_pixels=64 * 64,
                         allowed_image_url_schemes=frozenset({"data"}), max_body_bytes=100_000)


def png_data_url(width: int, height: int) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims huge dimensions, with almost no data behind it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def chat(*image_urls, as_object: bool = True) -> dict:
    parts = [{"type": "text", "text": "describe"}]
    for url in image_urls:
        parts.append({"type": "image_url", "image_url": {"url": url} if as_object else url})
    return {"model": "m", "messages": [{"role": "user", "content": parts}]}


def admit(body: dict | bytes) -> dict:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return admission.admit("chat", raw, POLICY)


def reason_of(body: dict | bytes) -> AdmissionError:
    with pytest.raises(AdmissionError) as info:
        admit(body)
    return info.value


def test_valid_requests_pass() -> None:
    small = png_data_url(32, 32)
    assert admit(chat(small, small))["model"] == "m"
    assert admit(chat(small, as_object=False))["model"] == "m"
    assert admit({"model": "m", "messages": [{"role": "user", "content": "plain text"}]})
    assert admission.admit("completions", b'{"prompt": "hi"}', POLICY) == {"prompt": "hi"}


@pytest.mark.parametrize("as_object", [True, False])
def test_too_many_images_counts_both_url_forms(as_object: bool) -> None:
    small = png_data_url(8, 8)
    err = reason_of(chat(small, small, small, as_object=as_object))
    assert err.reason == "too_many_images" and err.status == 400
    assert "At most 2 image(s)" in err.message and "got 3" in err.message


def test_images_are_counted_across_messages() -> None:
    small = png_data_url(8, 8)
    body = chat(small)
    body["messages"] += chat(small)["messages"] + chat(small)["messages"]
    assert reason_of(body).reason == "too_many_images"


def test_image_too_large_is_judged_from_base64_length() -> None:
    # Random bytes do not compress: the PNG is well over 4096 bytes.
    buf = io.BytesIO()
    Image.frombytes("RGB", (60, 60), random.Random(0).randbytes(60 * 60 * 3)).save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    err = reason_of(chat(url))
    assert err.reason == "image_too_large" and "exceeds the limit of 4096 bytes" in err.message
    assert err.param == "messages[0].content[1].image_url"


def test_decoded_size_from_length() -> None:
    for n in range(0, 20):
        raw = bytes(range(n))
        assert admission.decoded_size(base64.b64encode(raw).decode()) == n


def test_too_many_pixels_from_header_only() -> None:
    huge = png_header_claiming(50_000, 50_000)  # 2.5e9 pixels claimed, ~60 bytes of data
    assert len(huge) < 200
    url = "data:image/png;base64," + base64.b64encode(huge).decode()
    err = reason_of(chat(url))
    assert err.reason == "image_too_many_pixels"
    # Just over our own limit (well under Pillow's bomb limit): our check, with the dimensions.
    err = reason_of(chat(png_data_url(65, 64)))
    assert err.reason == "image_too_many_pixels" and "65x64" in err.message


@pytest.mark.parametrize("url", [
    "data:image/png;base64,bm90IGFuIGltYWdl",   # valid base64, not an image
    "data:image/png;base64,!!!not-base64!!!",
    "data:image/png;base64,",
    "data:image/png,rawtext",                  # not base64-encoded
    "data:image/png;base64",                   # no comma
])
def test_undecodable_images(url: str) -> None:
    err = reason_of(chat(url))
    assert err.reason == "image_undecodable", err.message


@pytest.mark.parametrize("url", ["http://example.com/cat.png", "https://example.com/cat.png", "file:///etc/passwd",
                                 "cat.png"])
def test_disallowed_url_schemes(url: str) -> None:
    err = reason_of(chat(url))
    assert err.reason == "image_url_scheme" and "is not allowed; allowed: data" in err.message


def test_allowed_remote_host_passes_without_fetching_and_is_returned_for_resolution() -> None:
    policy = AdmissionPolicy(allowed_image_url_schemes=frozenset({"data", "https"}),
                             allowed_image_url_domains=frozenset({"images.example.com"}))
    body = json.dumps(chat("https://images.example.com/cat.png", "https://images.example.com/dog.png")).encode()
    data, hosts = admission.admit_body("chat", body, policy)
    assert data["model"] == "m" and hosts == ["images.example.com"]


REMOTE = AdmissionPolicy(allowed_image_url_schemes=frozenset({"data", "http", "https"}),
                         allowed_image_url_domains=frozenset({"images.example.com", "127.0.0.1", "10.0.0.1",
                                                              "169.254.169.254", "::1"}))


@pytest.mark.parametrize("url, reason", [
    ("https://other.example.com/cat.png", "image_url_not_allowed"),  # not on the list
    ("https://images.example.com.evil.test/x.png", "image_url_not_allowed"),  # suffix tricks
    ("https://evil.test@images.example.com/x.png", "image_url_not_allowed"),  # user info
    ("http://127.0.0.1:8000/x.png", "image_url_not_allowed"),  # loopback, even when listed
    ("http://10.0.0.1/x.png", "image_url_not_allowed"),  # private
    ("http://169.254.169.254/latest/meta-data", "image_url_not_allowed"),  # link-local (cloud metadata)
    ("http://[::1]/x.png", "image_url_not_allowed"),
    ("file:///etc/passwd", "image_url_scheme"),
    ("ftp://images.example.com/x.png", "image_url_scheme"),
    ("https://images.example.com:99999/x.png", "image_url_not_allowed"),  # malformed port
])
def test_remote_url_policy(url: str, reason: str) -> None:
    with pytest.raises(AdmissionError) as info:
        admission.admit("chat", json.dumps(chat(url)).encode(), REMOTE)
    assert info.value.reason == reason and info.value.status == 400
    assert info.value.param == "messages[0].content[1].image_url"


def test_https_allowed_without_domains_refuses_every_remote_url() -> None:
    policy = AdmissionPolicy(allowed_image_url_schemes=frozenset({"data", "https"}))
    with pytest.raises(AdmissionError) as info:
        admission.admit("chat", json.dumps(chat("https://example.com/cat.png")).encode(), policy)
    assert info.value.reason == "image_url_not_allowed" and "none are configured" in info.value.message


@pytest.mark.parametrize("addresses, ok", [
    (["93.184.216.34"], True), (["2606:2800:220:1::1"], True),
    (["93.184.216.34", "10.1.2.3"], False), (["127.0.0.1"], False), (["::ffff:127.0.0.1"], False),
    (["fe80::1"], False), (["100.64.0.1"], False), (["0.0.0.0"], False), ([], False),
])
def test_resolved_addresses_must_all_be_public(addresses: list[str], ok: bool) -> None:
    from pixtral_runtime.router import urlpolicy

    if ok:
        urlpolicy.check_addresses("images.example.com", addresses)
    else:
        with pytest.raises(AdmissionError) as info:
            urlpolicy.check_addresses("images.example.com", addresses)
        assert info.value.reason == "image_url_not_allowed"


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[1, 2]", b'"text"', b"\xff\xfe"])
def test_malformed_json(raw: bytes) -> None:
    err = reason_of(raw)
    assert err.reason == "invalid_json" and err.status == 400


def test_malformed_messages() -> None:
    assert reason_of({"messages": "hello"}).reason == "invalid_request"
    assert reason_of({"messages": ["hello"]}).param == "messages[0]"
    assert reason_of(chat(None)).reason == "invalid_image"


def test_body_too_large_by_content_length() -> None:
    with pytest.raises(BodyTooLarge) as info:
        admission.check_content_length(b"100001", POLICY)
    assert info.value.status == 413 and "exceeds the limit of 100000 bytes" in info.value.message
    admission.check_content_length(b"100000", POLICY)
    admission.check_content_length(None, POLICY)
    with pytest.raises(AdmissionError, match="Content-Length is not a number"):
        admission.check_content_length(b"lots", POLICY)


def test_large_images_are_judged_from_a_decoded_prefix_only(monkeypatch: pytest.MonkeyPatch) -> None:
    buf = io.BytesIO()
    Image.frombytes("RGB", (400, 400), random.Random(1).randbytes(400 * 400 * 3)).save(buf, format="PNG")
    assert len(buf.getvalue()) > 400_000
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    decoded: list[int] = []
    real = admission.binascii.a2b_base64

    def spy(data, **kw):
        decoded.append(len(data))
        return real(data, **kw)

    monkeypatch.setattr(admission.binascii, "a2b_base64", spy)
    policy = AdmissionPolicy(max_image_bytes=1 << 20, max_image_pixels=400 * 400)
    admission.check_data_url(url, "p", policy)
    assert decoded == [64 * 1024]  # 48 KiB of the 480 KB image were decoded
    with pytest.raises(AdmissionError) as info:
        admission.check_data_url(url, "p", AdmissionPolicy(max_image_bytes=1 << 20, max_image_pixels=399 * 400))
    assert info.value.reason == "image_too_many_pixels" and "400x400" in info.value.message


def test_a_header_beyond_the_prefix_is_still_found() -> None:
    # A JPEG whose dimensions come after a ~60 KB EXIF block: the prefix is not enough, the whole is.
    buf = io.BytesIO()
    Image.new("RGB", (90, 70), (1, 2, 3)).save(buf, format="JPEG", exif=b"Exif\x00\x00" + bytes(60_000))
    url = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
    admission.check_data_url(url, "p", AdmissionPolicy(max_image_pixels=90 * 70))
    with pytest.raises(AdmissionError, match="90x70"):
        admission.check_data_url(url, "p", AdmissionPolicy(max_image_pixels=90 * 70 - 1))
