"""Shared e2e fixtures. The local cluster starts lazily: only tests that request `cluster` (directly
or through `namespace`/`kubectl`) pay for it; other e2e tests never touch it.

A cluster that was already running when the session began (e.g. from `make cluster-up` or an
earlier session) is reused and left running. A cluster this session started is stopped at the end,
unless PIXTRAL_KEEP_CLUSTER=1 is set (then `make cluster-down` stops it) or another test session
still uses it (then that session stops it when it ends).
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import localcluster  # noqa: E402
from localcluster import Cluster, wait_for  # noqa: E402

# The PixtralDeployment fixtures, visible to every e2e module (pixtral_e2e.py holds them).
from pixtral_e2e import (  # noqa: E402
    RESTRICTED_NAMESPACE_LABELS,
    crds,
    create_namespace,
    delete_namespace,
    local_images,
    operator,
    tiny_model,
    tiny_model_dir,
)

__all__ = ["crds", "local_images", "operator", "tiny_model", "tiny_model_dir", "wait_for"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Latency targets are measurements, not pass/fail checks of `make test`: on this shared 2-core
    machine their outcome depends on what else runs. `make bench-fairness` runs them
    (PIXTRAL_LATENCY_TARGETS=1) and docs/benchmarks.md records what they measured."""
    if os.environ.get("PIXTRAL_LATENCY_TARGETS") == "1":
        return
    skip = pytest.mark.skip(reason="a latency target: run by make bench-fairness (PIXTRAL_LATENCY_TARGETS=1)")
    for item in items:
        if item.get_closest_marker("latency_target"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """The running local cluster (started on first use): kubeconfig, kubectl, helm, Prometheus, clients."""
    paths = localcluster.ClusterPaths.default()
    try:
        info = localcluster.up(paths, owner="pytest", say=lambda line: print(f"[cluster] {line}"))
    except localcluster.ClusterError as error:
        pytest.fail(f"local cluster unavailable: {error}", pytrace=False)
    marker = localcluster.join_session(paths)
    handle = Cluster(info)
    try:
        yield handle
    finally:
        handle.close()
        localcluster.leave_session(paths, marker, keep=os.environ.get("PIXTRAL_KEEP_CLUSTER") == "1")


@pytest.fixture
def kubectl(cluster: Cluster) -> Callable[..., object]:
    """kubectl(*args, check=True, input=None, timeout=60) against the cluster; returns CompletedProcess."""
    return cluster.kubectl


def _fresh_namespace(cluster: Cluster, request: pytest.FixtureRequest, labels: dict[str, str]) -> Iterator[str]:
    base = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:40].strip("-")
    name = create_namespace(cluster, f"{base}-{uuid.uuid4().hex[:6]}", labels)
    try:
        yield name
    finally:
        delete_namespace(cluster, name)


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh tenant namespace enforcing PSA `restricted`, with its default ServiceAccount; deleted
    afterwards, waiting until its pods are gone."""
    yield from _fresh_namespace(cluster, request, RESTRICTED_NAMESPACE_LABELS)


@pytest.fixture
def open_namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace without Pod Security enforcement, for tests of the node itself (hostPath
    volumes, root users)."""
    yield from _fresh_namespace(cluster, request, {})
