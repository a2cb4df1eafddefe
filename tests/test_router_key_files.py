"""The API-key Secret mounted as a volume: the router reads the kubelet's file layout and follows a
rotation (the atomic `..data` switch) without a restart, and never reads Secrets through the API."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from pixtral_runtime.router import discovery
from pixtral_runtime.router.config import parse_config
from pixtral_runtime.router.discovery import KubernetesDiscovery, api_keys_from_files
from pixtral_runtime.router.metrics import RouterMetrics
from pixtral_runtime.router.settings import RouterSettings, settings_from
from pixtral_runtime.router.state import RouterState
from test_router_config import OPERATOR_CONFIG


def write_secret_volume(root: Path, data: dict[str, str], version: str) -> None:
    """What the kubelet's atomic writer leaves: a timestamped folder, `..data` pointing at it, and
    one symlink per key through `..data`."""
    folder = root / f"..{version}"
    folder.mkdir()
    for key, value in data.items():
        (folder / key).write_text(value)
    tmp_link = root / "..data_tmp"
    tmp_link.symlink_to(folder.name)
    os.replace(tmp_link, root / "..data")
    for key in data:
        link = root / key
        if not link.is_symlink():
            link.symlink_to(f"..data/{key}")


def test_key_files_in_the_kubelets_layout(tmp_path):
    write_secret_volume(tmp_path, {"team-a": "sk-a\n", "team-b": "sk-b", "empty": "  \n"}, "2026_01_01")
    assert api_keys_from_files(str(tmp_path)) == {"team-a": "sk-a", "team-b": "sk-b"}


def test_settings_read_the_keys_dir_from_env_and_flag():
    env = {"PIXTRAL_NAMESPACE": "team", "PIXTRAL_ROUTER_CONFIGMAP": "demo-router"}
    assert settings_from([], env).api_keys_dir is None
    assert settings_from([], {**env, "PIXTRAL_ROUTER_API_KEYS_DIR": "/keys"}).api_keys_dir == "/keys"
    assert settings_from(["--api-keys-dir", "/k2"], {**env, "PIXTRAL_ROUTER_API_KEYS_DIR": "/keys"}).api_keys_dir == "/k2"


async def until(check, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail("timed out")
        await asyncio.sleep(0.01)


async def test_discovery_follows_the_mounted_keys_without_the_api(tmp_path, monkeypatch):
    monkeypatch.setattr(discovery, "KEY_FILES_POLL_SECONDS", 0.02)
    write_secret_volume(tmp_path, {"team-a": "sk-one"}, "2026_01_01")
    state = RouterState(RouterMetrics("demo"))
    settings = RouterSettings(namespace="team", configmap="demo-router", api_keys_dir=str(tmp_path))
    found = KubernetesDiscovery(state, settings)
    # No API client exists: any attempt to watch the Secret through the API would fail here.
    config = parse_config(OPERATOR_CONFIG)
    state.apply_config(config)
    assert not state.ready, "a key Secret is configured and its keys are not read yet"
    found._sync_secret_watch(config)
    await until(lambda: state.api_keys == {"team-a": "sk-one"})
    assert state.ready
    assert state.authenticator.authenticate(b"Bearer sk-one") == "team-a"

    # A rotation as the kubelet writes it: new folder, `..data` switched atomically.
    write_secret_volume(tmp_path, {"team-a": "sk-two", "team-c": "sk-c"}, "2026_01_02")
    await until(lambda: state.api_keys == {"team-a": "sk-two", "team-c": "sk-c"})

    # The config no longer names a Secret: the endpoint is open again and the files are not read.
    open_config = parse_config({**OPERATOR_CONFIG, "tenancy": {"defaultLimits": {}, "tenants": {}}})
    state.apply_config(open_config)
    found._sync_secret_watch(open_config)
    assert state.api_keys is None and state.ready
    await found.stop()
