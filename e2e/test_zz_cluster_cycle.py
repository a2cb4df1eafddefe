"""Last in the session (file order): `down` stops every process `up` started and leaves the host as
it was before `up` (processes, mounts, network namespaces, links, iptables, ipsets, cgroups,
sysctls); `up` then brings the cluster back for whoever uses it next."""

from __future__ import annotations

import pytest
from localcluster import Cluster, ClusterPaths, down, hoststate, up

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]


def test_down_leaves_the_host_as_it_found_it(cluster: Cluster) -> None:
    paths: ClusterPaths = cluster.info.paths
    before = hoststate.HostState.from_json(paths.host_before.read_text())
    records = cluster.info.records()
    owner = cluster.info.state.get("owner", "pytest")
    assert cluster.sandboxes("kube-system"), "CoreDNS runs in a sandbox before the cycle"
    down(paths, say=print)
    assert [r.name for r in records if r.alive()] == []
    assert hoststate.leftovers(before, hoststate.read()) == {}
    assert not paths.state_dir.exists()
    info = up(paths, owner=owner, say=print)
    assert info.api_server
