"""Typed, validated settings of `pixtral-runtime serve`, read from PIXTRAL_* env vars and flags.

The contract (names, defaults, meaning) is docs/settings.md, "Runtime pods". Flags override the
environment. Parsing and validation are pure: `settings_from(argv, environ)` takes both as inputs
and raises `SettingsError` with a one-line message naming the offending setting.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

DEFAULT_MODEL = "mistralai/Pixtral-12B-2409"
ALLOWED_TENSOR_PARALLEL_SIZES = (1, 2, 4, 8)
# mistral: the weights of Mistral's native format (consolidated.safetensors). dummy: random weights
# of the model's architecture, nothing read from disk: benchmarks of the real architecture on GPUs
# without the 25 GB download (bench/gpu/). The operator never sets it.
LOAD_FORMATS = ("mistral", "dummy")
# Pixtral-12B-2409's context window.
MAX_MODEL_LEN_LIMIT = 131072


class SettingsError(ValueError):
    """A setting is missing or invalid; the message names it and is one line."""


@dataclass(frozen=True)
class RuntimeSettings:
    model: str = DEFAULT_MODEL
    revision: str | None = None
    # None: clients use the model string itself, as vLLM does by default.
    served_model_name: str | None = None
    tensor_parallel_size: int = 1
    images_per_prompt: int = 4
    max_model_len: int = 32768
    gpu_memory_utilization: float = 0.9
    max_num_seqs: int = 16
    # vLLM's multimodal processor cache, in GiB (vLLM's default: 4); the operator sizes it from the
    # pod's memory (docs/runtime.md, "Caches").
    mm_processor_cache_gb: float = 4.0
    extra_args: tuple[str, ...] = field(default_factory=tuple)
    host: str = "0.0.0.0"
    vllm_port: int = 8000
    health_port: int = 8081
    drain_timeout_seconds: float = 30.0
    load_format: str = "mistral"
    # vLLM's --otlp-traces-endpoint: it exports a span per request there, a child of the router's
    # (traceparent). The protocol and sampler come from OTEL_* variables (docs/operations.md, "Tracing").
    otlp_traces_endpoint: str | None = None


# (field, env var, flag, parser) in the order of docs/settings.md.
_SETTINGS_TABLE: tuple[tuple[str, str, str, str], ...] = (
    ("model", "PIXTRAL_MODEL", "--model", "str"),
    ("revision", "PIXTRAL_MODEL_REVISION", "--revision", "str"),
    ("served_model_name", "PIXTRAL_SERVED_MODEL_NAME", "--served-model-name", "str"),
    ("tensor_parallel_size", "PIXTRAL_TENSOR_PARALLEL_SIZE", "--tensor-parallel-size", "int"),
    ("images_per_prompt", "PIXTRAL_IMAGES_PER_PROMPT", "--images-per-prompt", "int"),
    ("max_model_len", "PIXTRAL_MAX_MODEL_LEN", "--max-model-len", "int"),
    ("gpu_memory_utilization", "PIXTRAL_GPU_MEMORY_UTILIZATION", "--gpu-memory-utilization", "float"),
    ("max_num_seqs", "PIXTRAL_MAX_NUM_SEQS", "--max-num-seqs", "int"),
    ("mm_processor_cache_gb", "PIXTRAL_MM_PROCESSOR_CACHE_GB", "--mm-processor-cache-gb", "float"),
    ("extra_args", "PIXTRAL_EXTRA_ARGS", "--extra-args", "json-list"),
    ("host", "PIXTRAL_HOST", "--host", "str"),
    ("vllm_port", "PIXTRAL_VLLM_PORT", "--port", "int"),
    ("health_port", "PIXTRAL_HEALTH_PORT", "--health-port", "int"),
    ("drain_timeout_seconds", "PIXTRAL_DRAIN_TIMEOUT_SECONDS", "--drain-timeout", "float"),
    ("load_format", "PIXTRAL_LOAD_FORMAT", "--load-format", "str"),
    ("otlp_traces_endpoint", "PIXTRAL_OTLP_TRACES_ENDPOINT", "--otlp-traces-endpoint", "str"),
)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pixtral-runtime serve",
        description="Start vLLM for Pixtral under a supervisor that reports health/readiness and drains "
        "in-flight requests on SIGTERM. Every flag can also be given as the PIXTRAL_* env var shown; "
        "flags override the environment.",
        allow_abbrev=False,
    )
    for name, env_var, flag, _kind in _SETTINGS_TABLE:
        parser.add_argument(flag, dest=name, default=None, metavar=env_var, help=f"(env {env_var})")
    return parser


def usage() -> str:
    return _build_parser().format_help()


def _convert(name: str, source: str, raw: str, kind: str) -> object:
    if kind == "str":
        if raw.strip() == "":
            raise SettingsError(f"{source} must not be empty")
        return raw.strip()
    if kind == "int":
        try:
            return int(raw.strip())
        except ValueError:
            raise SettingsError(f"{source} must be an integer, got {raw!r}") from None
    if kind == "float":
        try:
            value = float(raw.strip())
        except ValueError:
            raise SettingsError(f"{source} must be a number, got {raw!r}") from None
        if not math.isfinite(value):
            raise SettingsError(f"{source} must be a finite number, got {raw!r}")
        return value
    if kind == "json-list":
        if raw.strip() == "":
            return ()
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as error:
            raise SettingsError(f"{source} must be a JSON list of strings: {error.msg} at char {error.pos}") from None
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise SettingsError(f'{source} must be a JSON list of strings, e.g. ["--enforce-eager"], got {raw!r}')
        return tuple(value)
    raise AssertionError(kind)


def validate(settings: RuntimeSettings) -> RuntimeSettings:
    """Range checks that need no I/O. Device and model-folder checks live in `preflight`."""
    if settings.tensor_parallel_size not in ALLOWED_TENSOR_PARALLEL_SIZES:
        raise SettingsError(
            f"tensor parallel size (PIXTRAL_TENSOR_PARALLEL_SIZE / --tensor-parallel-size) must be one of "
            f"{', '.join(map(str, ALLOWED_TENSOR_PARALLEL_SIZES))}, got {settings.tensor_parallel_size}"
        )
    if settings.images_per_prompt < 1:
        raise SettingsError(
            f"image limit (PIXTRAL_IMAGES_PER_PROMPT / --images-per-prompt) must be >= 1, got {settings.images_per_prompt}"
        )
    if not 1 <= settings.max_model_len <= MAX_MODEL_LEN_LIMIT:
        raise SettingsError(
            f"max model length (PIXTRAL_MAX_MODEL_LEN / --max-model-len) must be in 1..{MAX_MODEL_LEN_LIMIT}, "
            f"got {settings.max_model_len}"
        )
    if not 0.0 < settings.gpu_memory_utilization <= 1.0:
        raise SettingsError(
            "GPU memory utilization (PIXTRAL_GPU_MEMORY_UTILIZATION / --gpu-memory-utilization) must be in (0, 1], "
            f"got {settings.gpu_memory_utilization}"
        )
    if settings.max_num_seqs < 1:
        raise SettingsError(f"max num seqs (PIXTRAL_MAX_NUM_SEQS / --max-num-seqs) must be >= 1, got {settings.max_num_seqs}")
    if settings.mm_processor_cache_gb < 0:
        raise SettingsError(
            "multimodal processor cache (PIXTRAL_MM_PROCESSOR_CACHE_GB / --mm-processor-cache-gb) must be >= 0 GiB, "
            f"got {settings.mm_processor_cache_gb}"
        )
    for label, port in (("vLLM port (PIXTRAL_VLLM_PORT / --port)", settings.vllm_port),
                        ("health port (PIXTRAL_HEALTH_PORT / --health-port)", settings.health_port)):
        if not 1 <= port <= 65535:
            raise SettingsError(f"{label} must be in 1..65535, got {port}")
    if settings.vllm_port == settings.health_port:
        raise SettingsError(f"vLLM port and health port must differ, both are {settings.vllm_port}")
    if settings.load_format not in LOAD_FORMATS:
        raise SettingsError(
            f"load format (PIXTRAL_LOAD_FORMAT / --load-format) must be one of {', '.join(LOAD_FORMATS)}, "
            f"got {settings.load_format!r}"
        )
    endpoint = settings.otlp_traces_endpoint
    if endpoint is not None and not endpoint.startswith(("http://", "https://")):
        raise SettingsError(
            "OTLP traces endpoint (PIXTRAL_OTLP_TRACES_ENDPOINT / --otlp-traces-endpoint) must be an http:// or "
            f"https:// URL, got {endpoint[:80]!r}"
        )
    if settings.drain_timeout_seconds < 0:
        raise SettingsError(
            f"drain timeout (PIXTRAL_DRAIN_TIMEOUT_SECONDS / --drain-timeout) must be >= 0, got {settings.drain_timeout_seconds}"
        )
    return settings


def settings_from(argv: Sequence[str], environ: Mapping[str, str]) -> RuntimeSettings:
    """Settings from env vars, overridden by flags, validated. Raises SettingsError."""
    parser = _build_parser()
    try:
        flags, unknown = parser.parse_known_args(list(argv))
    except SystemExit as exit_:
        raise SettingsError("invalid command line (see --help)") from exit_
    if unknown:
        raise SettingsError(
            f"unknown argument {unknown[0]!r}; vLLM flags go in PIXTRAL_EXTRA_ARGS / --extra-args as a JSON list"
        )
    values: dict[str, object] = {}
    for name, env_var, flag, kind in _SETTINGS_TABLE:
        flag_value = getattr(flags, name)
        if flag_value is not None:
            values[name] = _convert(name, flag, flag_value, kind)
        elif environ.get(env_var, "") != "":
            values[name] = _convert(name, env_var, environ[env_var], kind)
    return validate(RuntimeSettings(**values))  # type: ignore[arg-type]
