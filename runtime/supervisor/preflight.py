"""Checks that must pass before vLLM is started, so a bad pod fails in a second with a one-line
reason instead of after a minute of vLLM start-up (or with a stack trace). Pure: the environment,
the CPU count and the file system view are inputs."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath

from pixtral_runtime.supervisor.settings import RuntimeSettings

REQUIRED_MODEL_FILES = ("params.json", "tekken.json")


@dataclass(frozen=True)
class VisibleDevices:
    count: int | None  # None: unknown, the check is skipped and vLLM decides
    source: str


def _count_list(value: str) -> int:
    return len([item for item in value.split(",") if item.strip() != ""])


def visible_devices(environ: Mapping[str, str], cpu_build: bool, cpu_count: int) -> VisibleDevices:
    """What tensor parallelism is spread over: GPUs on GPU builds, CPU ranks on the CPU build."""
    if cpu_build:
        binding = environ.get("VLLM_CPU_OMP_THREADS_BIND", "").strip()
        # vLLM's CPU backend gives each TP rank one '|'-separated group of cores.
        if binding and binding not in {"auto", "nobind"}:
            return VisibleDevices(len(binding.split("|")), f"VLLM_CPU_OMP_THREADS_BIND={binding!r} ranks")
        return VisibleDevices(cpu_count, "CPU cores")
    if "CUDA_VISIBLE_DEVICES" in environ:
        value = environ["CUDA_VISIBLE_DEVICES"]
        return VisibleDevices(_count_list(value), f"CUDA_VISIBLE_DEVICES={value!r}")
    if "NVIDIA_VISIBLE_DEVICES" in environ:
        value = environ["NVIDIA_VISIBLE_DEVICES"].strip()
        if value == "all":
            return VisibleDevices(None, "NVIDIA_VISIBLE_DEVICES='all'")
        if value in {"", "none", "void"}:
            return VisibleDevices(0, f"NVIDIA_VISIBLE_DEVICES={value!r}")
        return VisibleDevices(_count_list(value), f"NVIDIA_VISIBLE_DEVICES={value!r}")
    return VisibleDevices(None, "no CUDA_VISIBLE_DEVICES / NVIDIA_VISIBLE_DEVICES")


def tensor_parallel_problem(tensor_parallel_size: int, devices: VisibleDevices) -> str | None:
    if devices.count is None:
        return None
    if devices.count == 0:
        return f"tensor parallel size {tensor_parallel_size} needs devices, but {devices.source} shows none"
    if devices.count < tensor_parallel_size or devices.count % tensor_parallel_size != 0:
        return (
            f"tensor parallel size {tensor_parallel_size} does not divide the {devices.count} visible "
            f"device(s) ({devices.source})"
        )
    return None


def looks_like_local_path(model: str, exists: Callable[[str], bool]) -> bool:
    """Hub names are `org/name`; anything absolute, relative-looking or present on disk is a folder."""
    return model.startswith(("/", "./", "../", "~")) or exists(model)


def model_folder_problem(model: str, is_dir: Callable[[str], bool], list_dir: Callable[[str], Iterable[str]],
                         exists: Callable[[str], bool], needs_weights: bool = True) -> str | None:
    """Mistral's native format needs params.json, tekken.json and safetensors weights (not with
    random weights: `--load-format dummy` reads only the architecture and the tokenizer)."""
    if not looks_like_local_path(model, exists):
        return None
    if not is_dir(model):
        return f"model folder {model} does not exist or is not a directory"
    names = set(list_dir(model))
    missing = [name for name in REQUIRED_MODEL_FILES if name not in names]
    if needs_weights and not any(PurePosixPath(name).suffix == ".safetensors" for name in names):
        missing.append("consolidated.safetensors (or *.safetensors)")
    if missing:
        return f"model folder {model} is missing {', '.join(missing)}"
    return None


def preflight_problem(settings: RuntimeSettings, devices: VisibleDevices, is_dir: Callable[[str], bool],
                      list_dir: Callable[[str], Iterable[str]], exists: Callable[[str], bool]) -> str | None:
    """The first reason not to start vLLM, as one line, or None."""
    return tensor_parallel_problem(settings.tensor_parallel_size, devices) or model_folder_problem(
        settings.model, is_dir, list_dir, exists, needs_weights=settings.load_format != "dummy"
    )
