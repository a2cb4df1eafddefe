"""Fixtures shared by the unit tests."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

BUILD_SCRIPT = Path(__file__).resolve().parent.parent / "e2e" / "tools" / "build-binaries.sh"


def pinned_prometheus_version() -> str:
    """The Prometheus module version build-binaries.sh pins (its one source)."""
    return re.search(r'PROMETHEUS_VERSION="\$\{PROMETHEUS_VERSION:-(v[0-9.]+)\}"', BUILD_SCRIPT.read_text()).group(1)


@pytest.fixture(scope="session")
def promtool() -> str:
    """promtool of the Prometheus that `make binaries` builds (e2e/tools/build-binaries.sh)."""
    cache_root = Path(os.environ.get("PIXTRAL_CACHE", Path.home() / ".cache" / "pixtral-operator"))
    found = cache_root / "bin" / f"prometheus-{pinned_prometheus_version()}" / "promtool"
    if not found.is_file():
        pytest.skip(f"promtool not built yet ({found}): `make binaries` builds it")
    return str(found)
