"""Who may pin a track with the override header: the permission, its config and its errors (pure)."""

from __future__ import annotations

import pytest
from pixtral_runtime.router.choice import CANARY, STABLE
from pixtral_runtime.router.config import ConfigError, parse_config
from pixtral_runtime.router.errors import InvalidRequest, PermissionDenied, error_response
from pixtral_runtime.router.override import permitted_override

HEADER = "x-pixtral-track"
BASE = {"backends": {"stable": [], "canary": []}, "apiKeys": {"qa": "sk-qa", "team-a": "sk-a"}}


def test_only_tenants_marked_in_the_tenancy_config_may_override() -> None:
    config = parse_config({**BASE, "tenancy": {"tenants": {
        "qa": {"trackOverride": True}, "team-a": {"maxConcurrent": 2}, "team-b": {"trackOverride": False}}}})
    assert config.tenancy.track_override_tenants == {"qa"}
    # A tenant entry that only carries the mark keeps the default limits.
    assert config.tenancy.limits_for("qa") == config.tenancy.default_limits


def test_no_tenant_may_override_by_default() -> None:
    assert parse_config(BASE).tenancy.track_override_tenants == frozenset()


def test_a_mark_that_is_not_a_boolean_is_named() -> None:
    with pytest.raises(ConfigError, match=r"config.json.tenancy.tenants.qa.trackOverride must be true or false"):
        parse_config({**BASE, "tenancy": {"tenants": {"qa": {"trackOverride": "yes"}}}})


def test_allowed_tenant_pins_either_track() -> None:
    assert permitted_override(b"canary", HEADER, "qa", {"qa"}) == CANARY
    assert permitted_override(b" Stable ", HEADER, "qa", {"qa"}) == STABLE
    with pytest.raises(InvalidRequest, match="must be 'stable' or 'canary'"):
        permitted_override(b"blue", HEADER, "qa", {"qa"})


def test_without_the_header_nothing_is_checked() -> None:
    assert permitted_override(None, HEADER, "team-a", frozenset()) is None


@pytest.mark.parametrize("value", [b"canary", b"stable", b"blue", b""])
def test_other_tenants_get_403_naming_the_header(value: bytes) -> None:
    with pytest.raises(PermissionDenied) as info:
        permitted_override(value, HEADER, "team-a", {"qa"})
    status, headers, body = error_response(info.value)
    assert status == 403
    assert info.value.param == HEADER and info.value.code == "track_override_not_allowed"
    assert b"x-pixtral-track" in body and b"'team-a'" in body and b"trackOverride" in body


def test_the_operator_renders_the_mark_the_router_reads() -> None:
    from pixtral_operator.render.router import router_config
    from pixtral_operator.spec import parse

    spec = parse("demo", "team", {"router": {"apiKeysSecretRef": {"name": "keys"}, "tenants": [
        {"name": "qa", "trackOverride": True}, {"name": "team-a", "maxConcurrent": 3, "trackOverride": False},
        {"name": "team-b", "requestsPerMinute": 5}]}})
    rendered = router_config(spec)
    assert rendered["tenancy"]["tenants"] == {
        "qa": {"trackOverride": True}, "team-a": {"maxConcurrent": 3}, "team-b": {"requestsPerMinute": 5}}
    assert parse_config(rendered).tenancy.track_override_tenants == {"qa"}


def test_the_crd_declares_the_mark_as_a_boolean() -> None:
    import pathlib

    import yaml

    crd = yaml.safe_load(pathlib.Path(__file__).parent.joinpath(
        "..", "manifests", "crds", "serving.pixtral.dev_pixtraldeployments.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    tenant = spec["properties"]["router"]["properties"]["tenants"]["items"]["properties"]
    assert tenant["trackOverride"]["type"] == "boolean"
