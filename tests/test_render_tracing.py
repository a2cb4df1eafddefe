"""spec.tracing rendered for both sides: the router's config.json and the engines' environment agree
on the endpoint, the protocol and the ratio; the router parses what the operator renders."""

import json

import pytest
from pixtral_operator.render.tracing import traces_endpoint
from pixtral_operator.spec import Tracing
from pixtral_runtime.router.config import TracingPolicy, parse_config
from pixtral_runtime.supervisor.command import LaunchForm, vllm_command
from pixtral_runtime.supervisor.settings import settings_from
from test_render import env_of, render


@pytest.mark.parametrize("tracing,expected", [
    (Tracing(), None),
    (Tracing("http://c.obs:4317"), "http://c.obs:4317"),
    (Tracing("http://c.obs:4318", "http/protobuf"), "http://c.obs:4318/v1/traces"),
    (Tracing("http://c.obs:4318/", "http/protobuf"), "http://c.obs:4318/v1/traces"),
    (Tracing("https://otlp.example.com/otlp/v1/traces", "http/protobuf"), "https://otlp.example.com/otlp/v1/traces"),
])
def test_traces_endpoint(tracing, expected):
    assert traces_endpoint(tracing) == expected


def _router_config(objs):
    return parse_config(json.loads(objs[("ConfigMap", "demo-router")]["data"]["config.json"]))


def test_off_by_default_on_both_sides():
    objs = render()
    assert _router_config(objs).tracing == TracingPolicy()
    env = env_of(objs[("Deployment", "demo-stable")]["spec"]["template"]["spec"]["containers"][0])
    assert not [name for name in env if name.startswith("OTEL_") or "OTLP" in name]


def test_router_and_engines_get_the_same_endpoint_protocol_and_ratio():
    objs = render({"tracing": {"endpoint": "http://otel.obs:4318", "protocol": "http/protobuf", "samplingRatio": 0.25},
                   "canary": {"weight": 10}})
    assert _router_config(objs).tracing == TracingPolicy("http://otel.obs:4318/v1/traces", "http/protobuf", 0.25)
    for track in ("stable", "canary"):
        container = objs[("Deployment", f"demo-{track}")]["spec"]["template"]["spec"]["containers"][0]
        env = env_of(container)
        assert env["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] == "http/protobuf"
        assert env["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio" and env["OTEL_TRACES_SAMPLER_ARG"] == "0.25"
        assert env["OTEL_SERVICE_NAME"] == "pixtral-runtime"
        assert f"pixtral.track={track}" in env["OTEL_RESOURCE_ATTRIBUTES"]
        assert "k8s.namespace.name=team" in env["OTEL_RESOURCE_ATTRIBUTES"]
        # The supervisor turns the rendered environment into vLLM's flag.
        settings = settings_from([], {k: v for k, v in env.items() if isinstance(v, str)})
        argv = vllm_command(settings, LaunchForm.VLLM_SERVE, "python")
        assert argv[argv.index("--otlp-traces-endpoint") + 1] == "http://otel.obs:4318/v1/traces"


def test_a_users_otel_variable_never_replaces_the_operators():
    objs = render({"tracing": {"endpoint": "http://otel.obs:4317"},
                   "engine": {"env": [{"name": "OTEL_TRACES_SAMPLER", "value": "always_on"}]}})
    container = objs[("Deployment", "demo-stable")]["spec"]["template"]["spec"]["containers"][0]
    assert [e["value"] for e in container["env"] if e["name"] == "OTEL_TRACES_SAMPLER"] == ["parentbased_traceidratio"]
