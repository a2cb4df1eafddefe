"""The tiny Pixtral's files are what vLLM's Mistral-format loader reads (the engine test serves it)."""

from __future__ import annotations

import json

import numpy as np
from mistral_common.tokens.tokenizers.tekken import Tekkenizer
from pixtral_runtime.tiny_model import (
    IMAGE_BREAK_TOKEN_ID,
    IMAGE_END_TOKEN_ID,
    IMAGE_TOKEN_ID,
    TinyDims,
    main,
    to_bfloat16_bytes,
    weight_shapes,
)


def test_cli_writes_the_three_files(tmp_path, capsys):
    assert main([str(tmp_path / "tiny"), "--seed", "3"]) == 0
    assert sorted(p.name for p in (tmp_path / "tiny").iterdir()) == [
        "consolidated.safetensors", "params.json", "tekken.json"]
    assert "tiny Pixtral written" in capsys.readouterr().out


def test_weights_are_bf16_with_the_expected_names_and_shapes(tmp_path):
    main([str(tmp_path)])
    raw = (tmp_path / "consolidated.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + header_len])
    header.pop("__metadata__")
    expected = weight_shapes(TinyDims())
    assert {name: tuple(entry["shape"]) for name, entry in header.items()} == expected
    assert {entry["dtype"] for entry in header.values()} == {"BF16"}
    # The data section is contiguous and complete.
    assert max(entry["data_offsets"][1] for entry in header.values()) == len(raw) - 8 - header_len


def test_bfloat16_conversion_rounds_like_torch():
    values = np.array([1.0, -2.5, 0.1, 3.14159, 65504.0], dtype=np.float32)
    as_u16 = np.frombuffer(to_bfloat16_bytes(values), dtype="<u2")
    back = (as_u16.astype(np.uint32) << 16).view(np.float32)
    assert back.tolist() == [1.0, -2.5, 0.10009765625, 3.140625, 65536.0]


def test_weights_are_random_but_reproducible(tmp_path):
    main([str(tmp_path / "a"), "--seed", "1"])
    main([str(tmp_path / "b"), "--seed", "1"])
    main([str(tmp_path / "c"), "--seed", "2"])
    a, b, c = ((tmp_path / d / "consolidated.safetensors").read_bytes() for d in "abc")
    assert a == b
    assert a != c


def test_params_describe_a_pixtral_with_a_vision_encoder(tmp_path):
    main([str(tmp_path)])
    params = json.loads((tmp_path / "params.json").read_text())
    dims = TinyDims()
    assert params["dim"] == dims.dim and params["vocab_size"] == dims.vocab_size
    vision = params["vision_encoder"]
    assert (vision["image_token_id"], vision["image_break_token_id"], vision["image_end_token_id"]) == (
        IMAGE_TOKEN_ID, IMAGE_BREAK_TOKEN_ID, IMAGE_END_TOKEN_ID)
    assert vision["patch_size"] == 16 and vision["image_size"] == 256


def test_tokenizer_is_pixtrals_shrunk_and_encodes_images_small(tmp_path):
    main([str(tmp_path)])
    tokenizer = Tekkenizer.from_file(tmp_path / "tekken.json")
    assert tokenizer.n_words == TinyDims().vocab_size
    assert tokenizer.id_to_piece(IMAGE_TOKEN_ID) == "[IMG]"
    assert tokenizer.id_to_piece(IMAGE_BREAK_TOKEN_ID) == "[IMG_BREAK]"
    assert tokenizer.id_to_piece(IMAGE_END_TOKEN_ID) == "[IMG_END]"
    assert all(token < TinyDims().vocab_size for token in tokenizer.encode("Describe this picture.", True, False))
    assert tokenizer.image.max_image_size == 256 and tokenizer.image.image_patch_size == 16


def test_a_resized_vision_encoder_keeps_pixtrals_proportions(tmp_path):
    from pixtral_runtime.tiny_model import with_vision_encoder

    dims = with_vision_encoder(TinyDims(), 512, 6)
    assert (dims.vision_hidden, dims.vision_layers, dims.vision_heads, dims.vision_intermediate) == (512, 6, 8, 2048)
    assert dims.dim == TinyDims().dim  # the decoder is untouched
    assert main([str(tmp_path), "--vision-hidden", "512", "--vision-layers", "6"]) == 0
    params = json.loads((tmp_path / "params.json").read_text())["vision_encoder"]
    assert (params["hidden_size"], params["num_hidden_layers"], params["num_attention_heads"]) == (512, 6, 8)
    raw = (tmp_path / "consolidated.safetensors").read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    assert header["vision_encoder.transformer.layers.5.feed_forward.w1.weight"]["shape"] == [2048, 512]


def test_a_bad_vision_size_is_named(tmp_path, capsys):
    assert main([str(tmp_path), "--vision-hidden", "100"]) == 2
    assert "vision hidden size must be a positive multiple of 64, got 100" in capsys.readouterr().err
    assert main([str(tmp_path), "--vision-hidden", "128", "--vision-layers", "0"]) == 2
    assert "vision layers must be in 1..64, got 0" in capsys.readouterr().err
