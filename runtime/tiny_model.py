"""`pixtral-runtime tiny-model DIR`: a random-weight Pixtral small enough to serve on a CPU.

It has Pixtral-12B-2409's architecture (Mistral decoder + 2D-RoPE vision encoder + adapter) and
its tokenizer (mistral_common's bundled `tekken_240911.json`, vocabulary cut down), written in
Mistral's native format, so vLLM loads it with exactly the flags used for the real model
(`--tokenizer-mode mistral --config-format mistral --load-format mistral`). Its answers are
noise; its value is that every code path of a real deployment (image preprocessing, the
multimodal limit, batching, queue metrics, tensor parallelism) runs for real in seconds.

The weights are written with numpy and a hand-written safetensors header rather than torch, so
the command needs no torch import and finishes in well under a second.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import numpy as np

# Pixtral-12B-2409's tokenizer reserves the first 1000 ids for control tokens.
TOKENIZER_RESOURCE = "tekken_240911.json"
IMAGE_TOKEN_ID = 10
IMAGE_BREAK_TOKEN_ID = 12
IMAGE_END_TOKEN_ID = 13


@dataclass(frozen=True)
class TinyDims:
    vocab_size: int = 4096
    dim: int = 128
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    head_dim: int = 32
    hidden_dim: int = 256
    max_position_embeddings: int = 8192
    vision_hidden: int = 64
    vision_layers: int = 2
    vision_heads: int = 2
    vision_intermediate: int = 128
    # Small images keep the image token count (and CPU time) low: at most (256/16)^2 patches.
    image_size: int = 256
    patch_size: int = 16


# Pixtral-12B's vision encoder heads are 64 wide (hidden 1024 over 16 heads) and its MLP is 4x
# the hidden size; a resized encoder keeps both proportions.
VISION_HEAD_DIM = 64
VISION_MLP_RATIO = 4


def with_vision_encoder(dims: TinyDims, hidden: int, layers: int) -> TinyDims:
    """`dims` with a vision encoder of `hidden` width and `layers` layers in Pixtral-12B's
    proportions. The default encoder (64 wide, 2 layers) costs almost nothing next to a decode
    step; the affinity benchmark sizes it up so that an image's cost before the first token,
    relative to one decode step, resembles Pixtral-12B's (docs/benchmarks.md, "Image affinity")."""
    if hidden < VISION_HEAD_DIM or hidden % VISION_HEAD_DIM:
        raise ValueError(f"vision hidden size must be a positive multiple of {VISION_HEAD_DIM}, got {hidden}")
    if not 1 <= layers <= 64:
        raise ValueError(f"vision layers must be in 1..64, got {layers}")
    return replace(dims, vision_hidden=hidden, vision_layers=layers, vision_heads=hidden // VISION_HEAD_DIM,
                   vision_intermediate=VISION_MLP_RATIO * hidden)


def params_json(dims: TinyDims) -> dict:
    """Mistral-format params.json for a Pixtral with the given dimensions."""
    return {
        "dim": dims.dim,
        "n_layers": dims.n_layers,
        "head_dim": dims.head_dim,
        "hidden_dim": dims.hidden_dim,
        "n_heads": dims.n_heads,
        "n_kv_heads": dims.n_kv_heads,
        "rope_theta": 1_000_000_000.0,
        "norm_eps": 1e-05,
        "vocab_size": dims.vocab_size,
        "max_position_embeddings": dims.max_position_embeddings,
        "vision_encoder": {
            "hidden_size": dims.vision_hidden,
            "num_channels": 3,
            "image_size": dims.image_size,
            "patch_size": dims.patch_size,
            "rope_theta": 10000.0,
            "intermediate_size": dims.vision_intermediate,
            "num_hidden_layers": dims.vision_layers,
            "num_attention_heads": dims.vision_heads,
            "image_token_id": IMAGE_TOKEN_ID,
            "image_break_token_id": IMAGE_BREAK_TOKEN_ID,
            "image_end_token_id": IMAGE_END_TOKEN_ID,
            "adapter_bias": True,
        },
    }


def weight_shapes(dims: TinyDims) -> dict[str, tuple[int, ...]]:
    """Every tensor vLLM's Pixtral loader expects, with its shape (Mistral naming)."""
    shapes: dict[str, tuple[int, ...]] = {
        "tok_embeddings.weight": (dims.vocab_size, dims.dim),
        "norm.weight": (dims.dim,),
        "output.weight": (dims.vocab_size, dims.dim),
    }
    q_out, kv_out = dims.n_heads * dims.head_dim, dims.n_kv_heads * dims.head_dim
    for i in range(dims.n_layers):
        prefix = f"layers.{i}"
        shapes |= {
            f"{prefix}.attention.wq.weight": (q_out, dims.dim),
            f"{prefix}.attention.wk.weight": (kv_out, dims.dim),
            f"{prefix}.attention.wv.weight": (kv_out, dims.dim),
            f"{prefix}.attention.wo.weight": (dims.dim, q_out),
            f"{prefix}.feed_forward.w1.weight": (dims.hidden_dim, dims.dim),
            f"{prefix}.feed_forward.w2.weight": (dims.dim, dims.hidden_dim),
            f"{prefix}.feed_forward.w3.weight": (dims.hidden_dim, dims.dim),
            f"{prefix}.attention_norm.weight": (dims.dim,),
            f"{prefix}.ffn_norm.weight": (dims.dim,),
        }
    vh, vi = dims.vision_hidden, dims.vision_intermediate
    shapes |= {
        "vision_encoder.patch_conv.weight": (vh, 3, dims.patch_size, dims.patch_size),
        "vision_encoder.ln_pre.weight": (vh,),
    }
    for i in range(dims.vision_layers):
        prefix = f"vision_encoder.transformer.layers.{i}"
        shapes |= {
            f"{prefix}.attention.wq.weight": (vh, vh),
            f"{prefix}.attention.wk.weight": (vh, vh),
            f"{prefix}.attention.wv.weight": (vh, vh),
            f"{prefix}.attention.wo.weight": (vh, vh),
            f"{prefix}.feed_forward.w1.weight": (vi, vh),
            f"{prefix}.feed_forward.w2.weight": (vh, vi),
            f"{prefix}.feed_forward.w3.weight": (vi, vh),
            f"{prefix}.attention_norm.weight": (vh,),
            f"{prefix}.ffn_norm.weight": (vh,),
        }
    shapes |= {
        "vision_language_adapter.w_in.weight": (dims.dim, vh),
        "vision_language_adapter.w_in.bias": (dims.dim,),
        "vision_language_adapter.w_out.weight": (dims.dim, dims.dim),
        "vision_language_adapter.w_out.bias": (dims.dim,),
    }
    return shapes


def to_bfloat16_bytes(values: np.ndarray) -> bytes:
    """float32 -> bfloat16 bytes (round to nearest even), since numpy has no bfloat16 dtype."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + 0x7FFF
    return ((bits + rounding) >> 16).astype("<u2").tobytes()


def safetensors_bytes(tensors: dict[str, tuple[tuple[int, ...], bytes]]) -> bytes:
    """Serialise bf16 tensors in the safetensors layout: u64 header length, JSON header, data."""
    header: dict[str, dict] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (shape, data) in tensors.items():
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    # The data section must start 8-byte aligned; the format allows trailing spaces in the header.
    header_bytes += b" " * (-len(header_bytes) % 8)
    return struct.pack("<Q", len(header_bytes)) + header_bytes + b"".join(d for _, d in tensors.values())


def random_weights(dims: TinyDims, seed: int) -> dict[str, tuple[tuple[int, ...], bytes]]:
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape in weight_shapes(dims).items():
        is_norm = name.endswith("norm.weight") or name.endswith("ln_pre.weight") or name == "norm.weight"
        if is_norm:
            values = np.ones(shape, dtype=np.float32)
        elif name.endswith(".bias"):
            values = np.zeros(shape, dtype=np.float32)
        else:
            values = rng.normal(0.0, 0.02, size=shape).astype(np.float32)
        tensors[name] = (shape, to_bfloat16_bytes(values))
    return tensors


def shrink_tekken(tekken: dict, vocab_size: int) -> dict:
    """Cut Pixtral's tekken tokenizer to `vocab_size` ids (special tokens included) and make its
    images small (16 px patches, at most 256 px, no spatial merge) to match the tiny vision encoder."""
    config = dict(tekken["config"])
    num_special = config["default_num_special_tokens"]
    if vocab_size <= num_special:
        raise ValueError(f"vocab_size {vocab_size} must exceed the {num_special} special tokens")
    inner = vocab_size - num_special
    config["default_vocab_size"] = vocab_size
    config["num_vocab_tokens"] = inner
    shrunk = {key: value for key, value in tekken.items() if key not in {"config", "vocab", "image"}}
    return shrunk | {
        "config": config,
        "vocab": tekken["vocab"][:inner],
        "image": {"image_patch_size": 16, "max_image_size": 256, "spatial_merge_size": 1},
    }


def load_bundled_tekken() -> dict:
    """Pixtral-12B-2409's own tokenizer, shipped inside mistral_common (nothing is downloaded)."""
    data = resources.files("mistral_common").joinpath("data", TOKENIZER_RESOURCE)
    return json.loads(data.read_text(encoding="utf-8"))


def write_tiny_model(directory: Path, seed: int = 0, dims: TinyDims | None = None) -> Path:
    dims = dims or TinyDims()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "params.json").write_text(json.dumps(params_json(dims), indent=2) + "\n")
    (directory / "consolidated.safetensors").write_bytes(safetensors_bytes(random_weights(dims, seed)))
    tekken = shrink_tekken(load_bundled_tekken(), dims.vocab_size)
    (directory / "tekken.json").write_text(json.dumps(tekken, separators=(",", ":")))
    return directory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pixtral-runtime tiny-model",
        description="Write a random-weight tiny Pixtral (params.json, consolidated.safetensors, "
        "tekken.json) that vLLM serves with the same flags as Pixtral-12B-2409. Nothing is downloaded.",
    )
    parser.add_argument("directory", type=Path, help="folder to write (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="random seed for the weights (default 0)")
    parser.add_argument("--vision-hidden", type=int, default=None,
                        help="vision encoder width (a multiple of 64; default: the tiny 64-wide, 2-layer encoder)")
    parser.add_argument("--vision-layers", type=int, default=None,
                        help="vision encoder layers (with --vision-hidden; default 2)")
    args = parser.parse_args(argv)
    if args.directory.exists() and not args.directory.is_dir():
        print(f"pixtral-runtime tiny-model: {args.directory} exists and is not a directory", file=sys.stderr)
        return 2
    dims = TinyDims()
    if args.vision_hidden is not None or args.vision_layers is not None:
        try:
            dims = with_vision_encoder(
                dims, dims.vision_hidden if args.vision_hidden is None else args.vision_hidden,
                dims.vision_layers if args.vision_layers is None else args.vision_layers)
        except ValueError as exc:
            print(f"pixtral-runtime tiny-model: {exc}", file=sys.stderr)
            return 2
    path = write_tiny_model(args.directory, seed=args.seed, dims=dims)
    print(f"tiny Pixtral written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
