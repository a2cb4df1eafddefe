"""Chat content parts as vLLM's chat parser reads them, so admission counts what vLLM will load.

vLLM (`vllm/renderers/chat_utils.py`, `_parse_chat_message_content_mm_part`) does not only look at
`"type": "image_url"`: `"type": "input_image"` is an image too, and a part without a `type` (or
with a `uuid`, whatever its `type`) is classified by the first media key it carries. The tables
below mirror that parser at the pinned vLLM version; `tests/test_router_parts.py` reads vLLM's own
source and fails when an upgrade adds or reorders a shape, so this file is updated with it.

The router knows three kinds of part: text, image, and everything else vLLM can load (audio,
video, embeddings, PIL objects, tool references). Pixtral serves text and images only; the rest
is refused (fail closed), as is any type vLLM does not know.
"""

from __future__ import annotations

from typing import Any

from .errors import AdmissionError

TEXT = "text"
IMAGE = "image"
REFUSED = "refused"

# Every `type` value in vLLM's MM_PARSER_MAP, with what the router does with it.
PART_TYPES: dict[str, str] = {
    "text": TEXT,
    "input_text": TEXT,
    "output_text": TEXT,
    "refusal": TEXT,
    "thinking": TEXT,
    "image_url": IMAGE,
    "input_image": IMAGE,
    "image_embeds": REFUSED,
    "audio_embeds": REFUSED,
    "video_embeds": REFUSED,
    "prompt_embeds": REFUSED,
    "image_pil": REFUSED,
    "audio_url": REFUSED,
    "input_audio": REFUSED,
    "video_url": REFUSED,
    "tool_reference": REFUSED,
}

# The keys vLLM tries, in this order, on a part without a `type` (or with a `uuid`).
TYPELESS_KEYS: tuple[str, ...] = (
    "image_url", "image_pil", "image_embeds", "audio_embeds", "video_embeds", "prompt_embeds",
    "audio_url", "input_audio", "video_url", "tool_reference",
)

# Keys that make vLLM treat a part as media whatever its `type` says (`_MEDIA_CONTENT_PART_KEYS`).
MEDIA_KEYS = frozenset(t for t, kind in PART_TYPES.items() if kind != TEXT) - {"tool_reference"}


def vllm_part_type(part: dict[str, Any]) -> str | None:
    """The part type vLLM's parser assigns to a dict part; None where it would refuse the part."""
    part_type = part.get("type")
    if isinstance(part_type, str) and part_type in PART_TYPES and part.get("uuid") is None:
        return part_type
    if part_type is None or part.get("uuid") is not None:
        for key in TYPELESS_KEYS:
            if key in part:
                return key
    return None


def image_url_of(part: dict[str, Any], part_type: str) -> Any:
    """The URL vLLM would load for an image part (a string, or something invalid)."""
    ref = part.get("image_url")
    if isinstance(ref, dict):
        return ref.get("url")
    return ref


def classify(part: Any, param: str) -> tuple[str, Any]:
    """(kind, image URL or None) of one content part; refuses what Pixtral must not receive."""
    if isinstance(part, str):
        return TEXT, None
    if not isinstance(part, dict):
        raise AdmissionError("invalid_content_part", f"{param} must be a string or an object.", param=param)
    part_type = vllm_part_type(part)
    if part_type is None:
        shown = part.get("type")
        what = "has no `type`" if shown is None else f"has unsupported type {str(shown)[:40]!r}"
        raise AdmissionError(
            "invalid_content_part",
            f"{param} {what}; supported: text, image_url (images as data URLs).", param=f"{param}.type",
        )
    kind = PART_TYPES[part_type]
    if kind == REFUSED:
        raise AdmissionError(
            "unsupported_content_part",
            f"{param}: content parts of type {part_type!r} are not accepted; Pixtral takes text and images.",
            param=param,
        )
    # Fail closed on ambiguity: a part naming one kind but carrying another's payload.
    stray = sorted(k for k in MEDIA_KEYS if k in part and k != part_type and not (kind == IMAGE and k == "image_url"))
    if stray:
        raise AdmissionError(
            "invalid_content_part", f"{param} of type {part_type!r} also carries `{stray[0]}`.", param=param
        )
    if kind == TEXT:
        return TEXT, None
    if "file_id" in part or part.get("uuid") is not None:
        # A file or a cached item by reference: the router cannot see (so cannot check) the image.
        raise AdmissionError(
            "invalid_image", f"{param}: images must be sent inline (no file_id or uuid references).", param=param
        )
    url = image_url_of(part, part_type)
    if not isinstance(url, str) or not url:
        raise AdmissionError(
            "invalid_image", f"{param}.image_url must be a URL string or an object with a `url`.",
            param=f"{param}.image_url",
        )
    return IMAGE, url
