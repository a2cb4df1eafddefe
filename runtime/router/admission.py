"""Admission: refuse bad requests before they cost a GPU anything.

Everything here is a pure function of the request body and the policy. Images are judged
without decoding their pixels: the byte size comes from the base64 length, the dimensions from
the image header (Pillow's `Image.open` is lazy and reads only the header).
"""

from __future__ import annotations

import binascii
import io
import json
import warnings
from typing import Any, NamedTuple

from PIL import Image, UnidentifiedImageError

from . import affinity as _affinity
from . import parts, scan, urlpolicy
from .config import AdmissionPolicy
from .errors import AdmissionError, BodyTooLarge

try:  # orjson parses large (image-carrying) bodies several times faster; json is the fallback.
    import orjson

    _loads = orjson.loads
    _DecodeError: tuple[type[Exception], ...] = (orjson.JSONDecodeError, ValueError)
except ImportError:  # pragma: no cover - depends on the environment
    _loads = json.loads
    _DecodeError = (ValueError,)


# 64 KiB of base64 = 48 KiB of image: enough for the headers of PNG, GIF, WebP and most JPEGs.
_HEADER_B64_CHARS = 64 * 1024


def check_content_length(content_length: bytes | None, policy: AdmissionPolicy) -> int | None:
    """The declared body size (None for a chunked upload); 413 before a byte is read when too large."""
    if content_length is None:
        return None
    try:
        size = int(content_length)
    except ValueError:
        raise AdmissionError("invalid_request", "Content-Length is not a number.") from None
    if size > policy.max_body_bytes:
        raise BodyTooLarge(f"Request body of {size} bytes exceeds the limit of {policy.max_body_bytes} bytes.")
    return size


def parse_json_body(body: bytes) -> dict[str, Any]:
    if not body:
        raise AdmissionError("invalid_json", "The request body is empty; expected a JSON object.")
    try:
        data = _loads(body)
    except _DecodeError as exc:
        raise AdmissionError("invalid_json", f"The request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise AdmissionError("invalid_json", "The request body must be a JSON object.")
    return data


def image_urls(body: dict[str, Any]) -> list[tuple[str, str]]:
    """(param path, url) of every image part of a chat request, in order, in every shape vLLM's
    chat parser takes as an image (`parts.py`); other media and unknown parts are refused."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise AdmissionError("invalid_request", "`messages` must be a list of message objects.", param="messages")
    found: list[tuple[str, str]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise AdmissionError("invalid_request", f"messages[{i}] must be an object.", param=f"messages[{i}]")
        content = message.get("content")
        if content is None or isinstance(content, str):
            continue
        if not isinstance(content, list):
            raise AdmissionError(
                "invalid_request", f"messages[{i}].content must be a string or a list of content parts.",
                param=f"messages[{i}].content",
            )
        for j, part in enumerate(content):
            kind, url = parts.classify(part, f"messages[{i}].content[{j}]")
            if kind == parts.IMAGE:
                found.append((f"messages[{i}].content[{j}].image_url", url))
    return found


def decoded_size(b64: str) -> int:
    """Bytes that a base64 text decodes to, computed from its length (no decoding)."""
    return decoded_size_of(len(b64), b64[-2:])


class _DataUrl:
    """A data URL as text (small bodies) or as the bytes of a long literal (`scan.py`)."""

    __slots__ = ("header", "payload")

    def __init__(self, header: str, payload: str | memoryview) -> None:
        self.header = header
        self.payload = payload

    @classmethod
    def parse(cls, url: str | memoryview) -> _DataUrl | None:
        if isinstance(url, str):
            header, sep, payload = url.partition(",")
            return cls(header, payload) if sep else None
        comma = bytes(url[:1024]).find(b",")  # media type and parameters come before it
        if comma < 0:
            return None
        return cls(bytes(url[:comma]).decode("ascii", "replace"), url[comma + 1:])

    def size(self) -> int:
        payload = self.payload
        tail = payload[-2:] if isinstance(payload, str) else bytes(payload[-2:]).decode("ascii", "replace")
        return decoded_size_of(len(payload), tail)

    def prefix(self, chars: int) -> bytes:
        part = self.payload[:chars]
        return part.encode("ascii") if isinstance(part, str) else part  # type: ignore[return-value]


def decoded_size_of(length: int, tail: str) -> int:
    padding = 2 if tail.endswith("==") else 1 if tail.endswith("=") else 0
    return length * 3 // 4 - padding


def check_data_url(url: str | memoryview, param: str, policy: AdmissionPolicy) -> int:
    """Check one data URL; its pixels (width x height) when it passes."""
    data_url = _DataUrl.parse(url)
    if data_url is None:
        raise AdmissionError("image_undecodable", f"{param} is not a valid data URL (no comma).", param=param)
    if not data_url.header.lower().endswith(";base64"):
        raise AdmissionError(
            "image_undecodable", f"{param}: only base64 data URLs are supported for images.", param=param
        )
    size = data_url.size()
    if size > policy.max_image_bytes:
        raise AdmissionError(
            "image_too_large",
            f"{param}: image of {size} bytes exceeds the limit of {policy.max_image_bytes} bytes.",
            param=param,
        )
    # Only the start of the image is decoded: its header holds the format and the dimensions.
    # Decoding all of a 10 MB image would hold the event loop for a long time (hundreds of ms on
    # a busy core). A header that needs more bytes (e.g. a JPEG behind a large EXIF block) gets them.
    width = height = None
    payload_length = len(data_url.payload)
    for chars in (_HEADER_B64_CHARS, payload_length):
        try:
            raw = binascii.a2b_base64(data_url.prefix(chars), strict_mode=True)
        except (binascii.Error, UnicodeEncodeError, ValueError):
            raise AdmissionError(
                "image_undecodable", f"{param}: the data URL is not valid base64.", param=param
            ) from None
        try:
            width, height = _image_size(raw)
            break
        except Image.DecompressionBombError:
            raise AdmissionError(
                "image_too_many_pixels",
                f"{param}: image dimensions exceed the limit of {policy.max_image_pixels} pixels.", param=param,
            ) from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
            if chars >= payload_length:
                raise AdmissionError(
                    "image_undecodable", f"{param}: the image could not be decoded (unknown or corrupt format).",
                    param=param,
                ) from None
    assert width is not None and height is not None
    return _checked_pixels(width, height, param, policy)


def _checked_pixels(width: int, height: int, param: str, policy: AdmissionPolicy) -> int:
    if width * height > policy.max_image_pixels:
        raise AdmissionError(
            "image_too_many_pixels",
            f"{param}: image of {width}x{height} = {width * height} pixels exceeds the limit of "
            f"{policy.max_image_pixels} pixels.",
            param=param,
        )
    return width * height


def _image_size(raw: bytes) -> tuple[int, int]:
    with warnings.catch_warnings():
        # Our own pixel limit applies, not Pillow's process-wide one.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(raw)) as image:
            return image.size


def check_images(body: dict[str, Any], policy: AdmissionPolicy,
                 big: dict[str, memoryview] | None = None) -> list[str]:
    """Validate every image of a chat request; returns the remote hosts they name (for
    `urlpolicy.check_addresses` once resolved), empty with data URLs only. `big`: the long string
    literals `scan.shrink` cut out, by placeholder."""
    return _check_images(image_urls(body), policy, big)[0]


def _check_images(images: list[tuple[str, str]], policy: AdmissionPolicy,
                  big: dict[str, memoryview] | None) -> tuple[list[str], int]:
    """(remote hosts, pixels of the data URL images) of checked images."""
    if len(images) > policy.images_per_prompt:
        raise AdmissionError(
            "too_many_images",
            f"At most {policy.images_per_prompt} image(s) may be provided in one prompt; got {len(images)}.",
            param="messages",
        )
    hosts: list[str] = []
    pixels = 0
    for param, url in images:
        literal = big.get(url) if big and url.startswith(scan.PLACEHOLDER_PREFIX) else None
        if literal is not None:
            # Only a data URL is that long; its scheme is checked like any other.
            scheme = bytes(literal[:16]).split(b":", 1)[0].decode("ascii", "replace")
            urlpolicy.check_url(scheme + ":", param, policy)
            if scheme.lower() != "data":
                raise AdmissionError("image_url_not_allowed", f"{param}: the URL is too long.", param=param)
            pixels += check_data_url(literal, param, policy)
            continue
        host = urlpolicy.check_url(url, param, policy)
        if host is None:
            pixels += check_data_url(url, param, policy)
        elif host not in hosts:
            hosts.append(host)
    return hosts, pixels


def admit_body(path_kind: str, body: bytes, policy: AdmissionPolicy) -> tuple[dict[str, Any], list[str]]:
    """Parse and admit a request body for `chat` or `completions`: (the parsed body, the remote
    image hosts still to be resolved and checked)."""
    admitted = admit_request(path_kind, body, policy)
    return admitted.body, admitted.hosts


class Admitted(NamedTuple):
    body: dict[str, Any]
    hosts: list[str]  # remote image hosts still to be resolved and checked
    key: int | None  # the affinity key, when asked for and the request has images
    images: int
    # Pixels of the data URL images (remote images are not fetched here: they count as images only).
    pixels: int


def admit_request(path_kind: str, body: bytes, policy: AdmissionPolicy, *, affinity: bool = False) -> Admitted:
    """`admit_body` plus the image count and pixels (the tenant's image budgets) and, with
    `affinity`, the request's affinity key (`affinity.affinity_key` over its image URLs as
    admitted and its leading text; None without images), computed here so that hashing megabytes
    of images happens where admission already runs (a worker thread for large bodies)."""
    reduced = scan.shrink(body) if path_kind == "chat" else None
    big: dict[str, memoryview] | None = None
    if reduced is None:
        data = parse_json_body(body)
        if path_kind != "chat":
            return Admitted(data, [], None, 0, 0)
    else:
        document, big = reduced
        data = parse_json_body(document)
    images = image_urls(data)
    hosts, pixels = _check_images(images, policy, big)
    if not affinity:
        return Admitted(data, hosts, None, len(images), pixels)
    urls = [big.get(url, url) if big and url.startswith(scan.PLACEHOLDER_PREFIX) else url for _, url in images]
    return Admitted(data, hosts, _affinity.affinity_key(urls, _affinity.leading_text(data)), len(images), pixels)


def admit(path_kind: str, body: bytes, policy: AdmissionPolicy) -> dict[str, Any]:
    """`admit_body` without the hosts (callers that allow data URLs only)."""
    return admit_body(path_kind, body, policy)[0]
