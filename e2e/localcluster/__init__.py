"""The local cluster: a real Kubernetes control plane on 127.0.0.1 with simulated GPU nodes whose
pods run as local processes, plus Prometheus. `e2e/cluster.py` is its command line; tests,
the demo and the benchmarks import it from here."""

from .cluster import (
    Binaries,
    ClusterError,
    ClusterInfo,
    ClusterPaths,
    NodePool,
    down,
    join_session,
    leave_session,
    running_info,
    status,
    up,
    usage,
)
from .handle import Cluster
from .kube import ApiError, Credentials, KubeClient
from .waiting import WaitTimeout, wait_for

__all__ = [
    "ApiError", "Binaries", "ClusterError", "ClusterInfo", "ClusterPaths", "Credentials", "KubeClient", "NodePool",
    "Cluster", "WaitTimeout", "down", "join_session", "leave_session", "running_info", "status", "up", "usage", "wait_for",
]
