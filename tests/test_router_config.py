"""Router configuration and Kubernetes discovery parsing (pure; no cluster)."""

from __future__ import annotations

import base64
import json

import pytest
from pixtral_runtime.router.config import ConfigError, Limits, parse_config, unknown_fields
from pixtral_runtime.router.discovery import api_keys_from_secret, config_from_configmap, ready_backends
from pixtral_runtime.router.settings import SettingsError, settings_from

# The example of docs/settings.md, verbatim in shape.
OPERATOR_CONFIG = {
    "deployment": "demo",
    "servedModelName": "pixtral-12b",
    "tracks": {"stable": {"service": "demo-stable", "port": 8000}, "canary": {"service": "demo-canary", "port": 8000}},
    "canary": {"weight": 20, "stickyHeader": "x-session-id"},
    "overrideHeader": "x-pixtral-track",
    "admission": {"imagesPerPrompt": 4, "maxImageBytes": 10485760, "maxImagePixels": 4194304,
                  "allowedImageUrlSchemes": ["data"], "maxBodyBytes": 52428800},
    "tenancy": {"apiKeysSecret": "demo-api-keys", "defaultLimits": {"requestsPerMinute": 600, "maxConcurrent": 16},
                "tenants": {"team-a": {"requestsPerMinute": 60, "maxConcurrent": 4}}},
    "requestTimeoutSeconds": 600,
    "pendingTimeoutSeconds": 120,
}


def test_operator_config_parses() -> None:
    c = parse_config(OPERATOR_CONFIG)
    assert c.deployment == "demo" and c.served_model_name == "pixtral-12b"
    assert c.tracks["canary"].service == "demo-canary" and c.tracks["stable"].port == 8000
    assert c.canary_weight == 20 and c.sticky_header == "x-session-id"
    assert c.admission.images_per_prompt == 4 and c.admission.allowed_image_url_schemes == {"data"}
    assert c.tenancy.limits_for("team-a") == Limits(60, 4)
    assert c.tenancy.limits_for("someone-else") == Limits(600, 16)
    assert c.auth_required and c.backends is None


def test_static_config_with_backends_and_keys() -> None:
    c = parse_config({"backends": {"stable": ["http://127.0.0.1:8000/"], "canary": []}, "apiKeys": {"t": "sk-1"}})
    assert c.backends == {"stable": ("http://127.0.0.1:8000",), "canary": ()}
    assert c.api_keys == {"t": "sk-1"} and c.auth_required


def test_no_keys_anywhere_means_no_auth() -> None:
    assert not parse_config({"backends": {"stable": []}}).auth_required


@pytest.mark.parametrize("patch, field", [
    ({"canary": {"weight": 120}}, "config.json.canary.weight"),
    ({"canary": {"weight": "20"}}, "config.json.canary.weight"),
    ({"admission": {"imagesPerPrompt": -1}}, "config.json.admission.imagesPerPrompt"),
    ({"admission": {"maxImageBytes": True}}, "config.json.admission.maxImageBytes"),
    ({"admission": {"allowedImageUrlSchemes": "data"}}, "config.json.admission.allowedImageUrlSchemes"),
    ({"tracks": {"blue": {"service": "x"}}}, "unknown track 'blue'"),
    ({"tracks": {"stable": {"port": 8000}}}, "config.json.tracks.stable.service"),
    ({"tracks": {"stable": {"service": "s", "port": 70000}}}, "config.json.tracks.stable.port"),
    ({"tenancy": {"tenants": {"a": {"maxConcurrent": -2}}}}, "config.json.tenancy.tenants.a.maxConcurrent"),
    ({"backends": {"stable": ["127.0.0.1:8000"]}}, "config.json.backends.stable[0]"),
    ({"backends": {"stable": ["https://10.0.0.1:8000"]}}, "config.json.backends.stable[0]"),
    ({"backends": {"stable": ["http://10.0.0.1"]}}, "config.json.backends.stable[0]"),
    ({"requestTimeoutSeconds": 0}, "config.json.requestTimeoutSeconds"),
])
def test_bad_fields_are_named(patch: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({**OPERATOR_CONFIG, **patch})
    assert field in str(info.value)


def test_api_key_errors_do_not_echo_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"backends": {}, "apiKeys": {"t": 12345}})
    assert "config.json.apiKeys.t" in str(info.value) and "12345" not in str(info.value)


def test_needs_tracks_or_backends() -> None:
    with pytest.raises(ConfigError, match="needs `tracks`"):
        parse_config({"deployment": "x"})


def test_unknown_fields_are_reported_not_fatal() -> None:
    data = {**OPERATOR_CONFIG, "futureKnob": 1}
    assert parse_config(data).deployment == "demo"
    assert unknown_fields(data) == ["futureKnob"]


def test_settings_flags_override_env() -> None:
    env = {"PIXTRAL_ROUTER_PORT": "9000", "PIXTRAL_NAMESPACE": "ns", "PIXTRAL_ROUTER_CONFIGMAP": "demo-router"}
    s = settings_from(["--port", "9100"], env)
    assert s.port == 9100 and s.namespace == "ns" and s.mode == "kubernetes" and s.access_log
    assert not settings_from(["--config", "/x.json"], {"PIXTRAL_ROUTER_ACCESS_LOG": "0"}).access_log
    assert not settings_from(["--config", "/x.json", "--no-access-log"], {}).access_log
    assert settings_from(["--config", "/x.json"], {}).mode == "static"
    with pytest.raises(SettingsError, match="no configuration source"):
        settings_from([], {})
    with pytest.raises(SettingsError, match="PIXTRAL_ROUTER_PORT"):
        settings_from([], {**env, "PIXTRAL_ROUTER_PORT": "http"})


def slice_(endpoints, ports=({"name": "http", "port": 8000},), address_type="IPv4"):
    return {"metadata": {"name": "s"}, "addressType": address_type, "ports": list(ports), "endpoints": endpoints}


def test_ready_backends_from_endpoint_slices() -> None:
    slices = [
        slice_([
            {"addresses": ["10.0.0.1"], "conditions": {"ready": True}},
            {"addresses": ["10.0.0.2"], "conditions": {"ready": False, "terminating": True}},
            {"addresses": ["10.0.0.3"], "conditions": {}},  # nil ready counts as ready
            {"addresses": [], "conditions": {"ready": True}},
        ], ports=[{"name": "metrics", "port": 9000}, {"name": "http", "port": 8000}]),
        slice_([{"addresses": ["10.0.0.4"], "conditions": {"ready": True}}]),
        slice_([{"addresses": ["fd00::5"], "conditions": {"ready": True}}], address_type="IPv6"),
    ]
    assert ready_backends(slices) == [
        "http://10.0.0.1:8000", "http://10.0.0.3:8000", "http://10.0.0.4:8000", "http://[fd00::5]:8000",
    ]


def test_ready_backends_port_fallback_and_empty() -> None:
    assert ready_backends([slice_([{"addresses": ["10.1.1.1"]}], ports=[])], fallback_port=8001) == [
        "http://10.1.1.1:8001"]
    assert ready_backends([slice_([{"addresses": ["10.1.1.1"]}], ports=[])]) == []
    assert ready_backends([slice_(None)]) == []


def test_configmap_and_secret_parsing() -> None:
    cm = {"metadata": {"name": "demo-router"}, "data": {"config.json": json.dumps(OPERATOR_CONFIG)}}
    assert config_from_configmap(cm, name="demo-router").deployment == "demo"
    with pytest.raises(ConfigError, match="has no key 'config.json'"):
        config_from_configmap({"data": {}}, name="demo-router")
    with pytest.raises(ConfigError, match="ConfigMap demo-router config.json is not valid JSON"):
        config_from_configmap({"data": {"config.json": "{"}}, name="demo-router")
    secret = {"data": {"team-a": base64.b64encode(b"sk-a\n").decode(), "empty": ""}}
    assert api_keys_from_secret(secret) == {"team-a": "sk-a"}


@pytest.mark.parametrize("spec", [
    {},
    {"canary": {"weight": 25, "stickyHeader": "x-user"},
     "router": {"apiKeysSecretRef": {"name": "keys"}, "tenants": [{"name": "team-a", "requestsPerMinute": 60}]}},
])
def test_the_operators_rendered_configmap_is_accepted(spec: dict) -> None:
    """The contract with the operator: whatever it renders, the router parses (and keeps defaults)."""
    from pixtral_operator.render.router import router_configmap
    from pixtral_operator.spec import parse

    configmap = router_configmap(parse("demo", "team", spec))
    config = config_from_configmap(configmap, name=configmap["metadata"]["name"])
    assert config.deployment == "demo" and config.tracks["stable"].service == "demo-stable"
    if spec:
        assert config.canary_weight == 25 and config.sticky_header == "x-user"
        assert config.tenancy.api_keys_secret == "keys" and config.auth_required
        # A tenant that sets only its rate keeps the default concurrency.
        assert config.tenancy.limits_for("team-a") == Limits(60, config.tenancy.default_limits.max_concurrent)
