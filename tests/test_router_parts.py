"""Admission parity with vLLM's chat parser: the shapes vLLM takes as images are read from vLLM's
own source at the installed (pinned) version, so an upgrade that adds or reorders one fails here.

The source is parsed, not imported: importing vLLM's renderers takes most of a minute.
"""

from __future__ import annotations

import ast
import base64
import importlib.util
import io
import json
from pathlib import Path

import pytest
from PIL import Image
from pixtral_runtime.router import admission, parts
from pixtral_runtime.router.config import AdmissionPolicy
from pixtral_runtime.router.errors import AdmissionError


def _chat_utils() -> ast.Module:
    spec = importlib.util.find_spec("vllm")
    assert spec is not None and spec.origin, "vLLM is a dependency of the runtime (make install)"
    path = Path(spec.origin).parent / "renderers" / "chat_utils.py"
    assert path.is_file(), f"vLLM moved its chat parser: {path} is missing; update runtime/router/parts.py"
    return ast.parse(path.read_text())


VLLM = _chat_utils()


def _function(name: str) -> ast.FunctionDef:
    for node in ast.walk(VLLM):
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    raise AssertionError(f"vLLM has no {name}() any more; update runtime/router/parts.py")


def _assigned(name: str) -> ast.expr:
    for node in VLLM.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return node.value  # type: ignore[union-attr,return-value]
    raise AssertionError(f"vLLM has no {name} any more")


def _strings(node: ast.AST) -> list[str]:
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def vllm_part_types() -> set[str]:
    value = _assigned("MM_PARSER_MAP")
    assert isinstance(value, ast.Dict)
    return {k.value for k in value.keys if isinstance(k, ast.Constant)}


def vllm_typeless_keys() -> list[str]:
    """The `"key" in part` tests of the parser's no-type branch, in order."""
    keys = []
    for node in ast.walk(_function("_parse_chat_message_content_mm_part")):
        if (isinstance(node, ast.Compare) and isinstance(node.ops[0], ast.In) and isinstance(node.left, ast.Constant)
                and isinstance(node.comparators[0], ast.Name) and node.comparators[0].id == "part"):
            keys.append(node.left.value)
    return keys


def vllm_modalities() -> dict[str, str]:
    """Part type -> the modality `_parse_chat_message_content_part` loads it as."""
    found: dict[str, str] = {}
    for node in ast.walk(_function("_parse_chat_message_content_part")):
        if not (isinstance(node, ast.If) and "part_type" in ast.unparse(node.test)):
            continue
        modality = [s.value.value for s in node.body if isinstance(s, ast.Assign)
                    and any(isinstance(t, ast.Name) and t.id == "modality" for t in s.targets)
                    and isinstance(s.value, ast.Constant)]
        if modality:
            for part_type in _strings(node.test):
                found[part_type] = modality[0]
    return found


def test_every_vllm_part_type_has_a_router_decision() -> None:
    assert set(parts.PART_TYPES) == vllm_part_types()


def test_typeless_parts_are_classified_in_vllms_order() -> None:
    # A dict iteration order change would matter too: vLLM returns the first key it finds.
    assert parts.TYPELESS_KEYS == tuple(vllm_typeless_keys())


def test_a_uuid_sends_a_typed_part_down_the_typeless_branch_in_vllm_as_in_the_router() -> None:
    condition = ast.unparse(_function("_parse_chat_message_content_mm_part"))
    assert "isinstance(part_type, str) and part_type in MM_PARSER_MAP and (uuid is None)" in condition
    assert "if part_type is None or uuid is not None:" in condition
    assert parts.vllm_part_type({"type": "text", "text": "x", "uuid": "u", "image_url": "data:,"}) == "image_url"


def test_text_types_are_vllms_text_types_and_every_media_type_is_image_or_refused() -> None:
    text_types = set(_strings(_assigned("TEXT_PART_TYPES")))
    assert {t for t, kind in parts.PART_TYPES.items() if kind == parts.TEXT} == text_types
    modalities = vllm_modalities()
    assert modalities.get("image_url") == "image" and modalities.get("input_image") == "image"
    for part_type, modality in modalities.items():
        assert parts.PART_TYPES[part_type] != parts.TEXT, (part_type, modality)
    images = {t for t, kind in parts.PART_TYPES.items() if kind == parts.IMAGE}
    assert images <= {t for t, m in modalities.items() if m == "image"}


def _png() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


# Every shape in which vLLM reads an image URL from a JSON part.
IMAGE_SHAPES = [
    lambda url: {"type": "image_url", "image_url": {"url": url}},
    lambda url: {"type": "image_url", "image_url": url},
    lambda url: {"type": "input_image", "image_url": url, "detail": "auto"},
    lambda url: {"image_url": url},
    lambda url: {"image_url": {"url": url}},
]
POLICY = AdmissionPolicy(images_per_prompt=2)


def _admit(*content) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, *content]}]}
    admission.admit("chat", json.dumps(body).encode(), POLICY)


@pytest.mark.parametrize("shape", range(len(IMAGE_SHAPES)))
def test_every_image_shape_is_counted(shape: int) -> None:
    make = IMAGE_SHAPES[shape]
    _admit(make(_png()), make(_png()))
    with pytest.raises(AdmissionError) as info:
        _admit(make(_png()), make(_png()), make(_png()))
    assert info.value.reason == "too_many_images"


@pytest.mark.parametrize("shape", range(len(IMAGE_SHAPES)))
@pytest.mark.parametrize("url", ["file:///etc/passwd", "http://127.0.0.1:1/x.png", "https://example.com/x.png"])
def test_every_image_shape_is_checked_against_the_url_policy(shape: int, url: str) -> None:
    with pytest.raises(AdmissionError) as info:
        _admit(IMAGE_SHAPES[shape](url))
    assert info.value.reason == "image_url_scheme"


@pytest.mark.parametrize("part, reason", [
    ({"type": "audio_url", "audio_url": {"url": "data:audio/wav;base64,AAAA"}}, "unsupported_content_part"),
    ({"type": "video_url", "video_url": {"url": "http://x/v.mp4"}}, "unsupported_content_part"),
    ({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}, "unsupported_content_part"),
    ({"type": "image_embeds", "image_embeds": "AAAA"}, "unsupported_content_part"),
    ({"type": "prompt_embeds", "data": "AAAA"}, "unsupported_content_part"),
    ({"video_url": "http://x/v.mp4"}, "unsupported_content_part"),
    ({"image_embeds": "AAAA"}, "unsupported_content_part"),
    ({"type": "hologram", "hologram": 1}, "invalid_content_part"),
    ({"type": 7}, "invalid_content_part"),
    ({"text": "no type"}, "invalid_content_part"),
    ({"type": "text", "text": "x", "video_url": "http://x/v.mp4"}, "invalid_content_part"),
    ({"type": "text", "text": "x", "uuid": "u", "image_url": "data:,"}, "invalid_image"),
    ({"type": "input_image", "file_id": "file-123"}, "invalid_image"),
    ({"type": "image_url", "image_url": {"url": None}, "uuid": "cached"}, "invalid_image"),
    (["nested"], "invalid_content_part"),
])
def test_parts_pixtral_must_not_receive_are_refused(part, reason: str) -> None:
    with pytest.raises(AdmissionError) as info:
        _admit(part)
    assert info.value.reason == reason and info.value.status == 400


def test_content_of_another_type_is_refused() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": {"type": "image_url"}}]}
    with pytest.raises(AdmissionError) as info:
        admission.admit("chat", json.dumps(body).encode(), POLICY)
    assert info.value.reason == "invalid_request" and info.value.param == "messages[0].content"


def test_text_shapes_pass() -> None:
    _admit("plain string part", {"type": "input_text", "text": "a"}, {"type": "refusal", "refusal": "no"},
           {"type": "thinking", "thinking": "hmm"}, {"type": "output_text", "text": "b"})
