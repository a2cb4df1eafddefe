"""Runtime settings from env + flags, and their validation messages."""

from __future__ import annotations

import pytest
from pixtral_runtime.supervisor.settings import RuntimeSettings, SettingsError, settings_from


def test_env_vars_are_read_and_typed():
    settings = settings_from([], {
        "PIXTRAL_MODEL": "/models/pixtral",
        "PIXTRAL_MODEL_REVISION": "r1",
        "PIXTRAL_SERVED_MODEL_NAME": "pixtral-12b",
        "PIXTRAL_TENSOR_PARALLEL_SIZE": "4",
        "PIXTRAL_IMAGES_PER_PROMPT": "2",
        "PIXTRAL_MAX_MODEL_LEN": "8192",
        "PIXTRAL_GPU_MEMORY_UTILIZATION": "0.8",
        "PIXTRAL_MAX_NUM_SEQS": "32",
        "PIXTRAL_EXTRA_ARGS": '["--enforce-eager"]',
        "PIXTRAL_HOST": "10.1.2.3",
        "PIXTRAL_VLLM_PORT": "8000",
        "PIXTRAL_HEALTH_PORT": "8081",
        "PIXTRAL_DRAIN_TIMEOUT_SECONDS": "45",
    })
    assert settings == RuntimeSettings(
        model="/models/pixtral", revision="r1", served_model_name="pixtral-12b", tensor_parallel_size=4,
        images_per_prompt=2, max_model_len=8192, gpu_memory_utilization=0.8, max_num_seqs=32,
        extra_args=("--enforce-eager",), host="10.1.2.3", vllm_port=8000, health_port=8081,
        drain_timeout_seconds=45.0,
    )


def test_flags_override_env():
    settings = settings_from(
        ["--images-per-prompt", "6", "--port=9000", "--extra-args", '["--dtype", "bfloat16"]'],
        {"PIXTRAL_IMAGES_PER_PROMPT": "2", "PIXTRAL_VLLM_PORT": "8000", "PIXTRAL_EXTRA_ARGS": "[]"},
    )
    assert settings.images_per_prompt == 6
    assert settings.vllm_port == 9000
    assert settings.extra_args == ("--dtype", "bfloat16")


def test_empty_env_values_mean_unset():
    assert settings_from([], {"PIXTRAL_MODEL_REVISION": "", "PIXTRAL_EXTRA_ARGS": ""}) == RuntimeSettings()


@pytest.mark.parametrize(
    ("argv", "env", "names"),
    [
        ([], {"PIXTRAL_IMAGES_PER_PROMPT": "0"}, "image limit"),
        (["--images-per-prompt", "-1"], {}, "--images-per-prompt"),
        ([], {"PIXTRAL_TENSOR_PARALLEL_SIZE": "3"}, "PIXTRAL_TENSOR_PARALLEL_SIZE"),
        (["--tensor-parallel-size", "two"], {}, "--tensor-parallel-size"),
        ([], {"PIXTRAL_MAX_MODEL_LEN": "200000"}, "PIXTRAL_MAX_MODEL_LEN"),
        ([], {"PIXTRAL_GPU_MEMORY_UTILIZATION": "1.5"}, "PIXTRAL_GPU_MEMORY_UTILIZATION"),
        ([], {"PIXTRAL_GPU_MEMORY_UTILIZATION": "nan"}, "PIXTRAL_GPU_MEMORY_UTILIZATION"),
        ([], {"PIXTRAL_MAX_NUM_SEQS": "0"}, "PIXTRAL_MAX_NUM_SEQS"),
        ([], {"PIXTRAL_VLLM_PORT": "70000"}, "PIXTRAL_VLLM_PORT"),
        (["--health-port", "8000"], {}, "health port"),
        ([], {"PIXTRAL_DRAIN_TIMEOUT_SECONDS": "-5"}, "PIXTRAL_DRAIN_TIMEOUT_SECONDS"),
        ([], {"PIXTRAL_OTLP_TRACES_ENDPOINT": "collector:4317"}, "PIXTRAL_OTLP_TRACES_ENDPOINT"),
        ([], {"PIXTRAL_LOAD_FORMAT": "auto"}, "PIXTRAL_LOAD_FORMAT"),
        ([], {"PIXTRAL_EXTRA_ARGS": "--enforce-eager"}, "PIXTRAL_EXTRA_ARGS"),
        ([], {"PIXTRAL_EXTRA_ARGS": '{"a": 1}'}, "PIXTRAL_EXTRA_ARGS"),
        ([], {"PIXTRAL_EXTRA_ARGS": "[1, 2]"}, "PIXTRAL_EXTRA_ARGS"),
        (["--model", " "], {}, "--model"),
        (["--enforce-eager"], {}, "--enforce-eager"),
    ],
)
def test_bad_settings_fail_with_one_line_naming_the_setting(argv, env, names):
    with pytest.raises(SettingsError) as error:
        settings_from(argv, env)
    message = str(error.value)
    assert names in message
    assert "\n" not in message


@pytest.mark.parametrize("size", [1, 2, 4, 8])
def test_every_allowed_tensor_parallel_size_is_accepted(size):
    assert settings_from(["--tensor-parallel-size", str(size)], {}).tensor_parallel_size == size


def test_load_format_is_mistral_unless_random_weights_are_asked_for():
    assert settings_from([], {}).load_format == "mistral"
    assert settings_from([], {"PIXTRAL_LOAD_FORMAT": "dummy"}).load_format == "dummy"
    assert settings_from(["--load-format", "dummy"], {"PIXTRAL_LOAD_FORMAT": "mistral"}).load_format == "dummy"
