"""The local cluster: a real Kubernetes control plane and one real node (containerd, kubelet,
kube-proxy, NetworkPolicy enforcement, CoreDNS) built from Go modules and Debian packages, images
built here, plus Prometheus. `e2e/cluster.py` is its command line; tests, the demo and the
benchmarks import it from here."""

from .cluster import (
    Binaries,
    ClusterError,
    ClusterInfo,
    ClusterPaths,
    NodePool,
    down,
    join_session,
    leave_session,
    other_sessions_alive,
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
    "Cluster", "WaitTimeout", "down", "join_session", "leave_session", "other_sessions_alive", "running_info",
    "status", "up", "usage", "wait_for",
]
