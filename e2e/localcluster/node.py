"""The real node: containerd, the kubelet and kube-proxy (configuration as pure functions, plus the
kubelet's launcher that keeps its host sysctl writes away from the host).

Measured facts behind the settings are in docs/local-cluster.md ("The node"): this machine has no
CAP_SYS_RESOURCE (nothing may lower oom_score_adj), only cgroup v1, and the kubelet rewrites a few
host sysctls at start.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from . import network

NODE_NAME = "gpu-node-0"
# Sysctls the kubelet sets at start (setupKernelTunables). Its private mount namespace gets stand-in
# files bind-mounted over them, so its writes land there and the host keeps its values.
KUBELET_SYSCTLS = ("vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
                   "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes")
GPU_RESOURCE = "nvidia.com/gpu"


@dataclass(frozen=True)
class NodePaths:
    """Everything of the node under the cluster's state dir."""
    root: Path

    @property
    def containerd_state(self) -> Path:
        return self.root / "containerd" / "state"

    @property
    def containerd_config(self) -> Path:
        return self.root / "containerd" / "config.toml"

    @property
    def containerd_socket(self) -> Path:
        return self.root / "containerd" / "containerd.sock"

    @property
    def cni_conf_dir(self) -> Path:
        return self.root / "cni" / "net.d"

    @property
    def cni_ipam_dir(self) -> Path:
        return self.root / "cni" / "ipam"

    @property
    def kubelet_root(self) -> Path:
        return self.root / "kubelet"

    @property
    def kubelet_config(self) -> Path:
        return self.root / "kubelet-config.yaml"

    @property
    def kubelet_kubeconfig(self) -> Path:
        return self.root / "kubelet.kubeconfig"

    @property
    def sysctl_standins(self) -> Path:
        return self.root / "kubelet-sysctls"

    @property
    def static_pods(self) -> Path:
        return self.root / "static-pods"

    @property
    def resolv_conf(self) -> Path:
        return self.root / "resolv.conf"

    @property
    def pod_logs(self) -> Path:
        return self.root / "logs" / "pods"

    @property
    def volume_plugins(self) -> Path:
        return self.root / "kubelet-plugins"

    @property
    def kube_proxy_kubeconfig(self) -> Path:
        return self.root / "kube-proxy.kubeconfig"


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def containerd_config(paths: NodePaths, sandbox_image: str, root: Path) -> str:
    """containerd 1.6's config (version 2) with its own state and socket. Its root (content store and
    snapshots) is the image cache, kept across clusters: the engine image is 6.6 GB to import."""
    cri = '[plugins."io.containerd.grpc.v1.cri"]'
    sections: list[tuple[str, dict[str, object]]] = [
        ("", {"version": 2, "root": str(root), "state": str(paths.containerd_state),
              "oom_score": 0}),
        ("[grpc]", {"address": str(paths.containerd_socket)}),
        ("[ttrpc]", {"address": f"{paths.containerd_socket}.ttrpc"}),
        ("[debug]", {"level": "warn"}),
        ('[metrics]', {"address": ""}),
        (cri, {
            "sandbox_image": sandbox_image,
            # No CAP_SYS_RESOURCE in this VM: runc must not try to lower oom_score_adj.
            "restrict_oom_score_adj": True,
            "disable_apparmor": True,
            "disable_hugetlb_controller": True,
            "tolerate_missing_hugetlb_controller": True,
            "stream_server_address": "127.0.0.1",
            "stream_server_port": "0",
            "enable_selinux": False,
        }),
        (f'{cri[:-1]}.containerd]', {"snapshotter": "overlayfs", "default_runtime_name": "runc"}),
        (f'{cri[:-1]}.containerd.runtimes.runc]', {"runtime_type": "io.containerd.runc.v2"}),
        (f'{cri[:-1]}.containerd.runtimes.runc.options]', {"SystemdCgroup": False}),
        (f'{cri[:-1]}.cni]', {"bin_dir": "/usr/lib/cni", "conf_dir": str(paths.cni_conf_dir),
                              "max_conf_num": 1}),
    ]
    lines = []
    for header, values in sections:
        if header:
            lines.append("")
            lines.append(header)
        lines += [f"{key} = {toml_value(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class KubeletPorts:
    port: int
    healthz: int


def kubelet_config(paths: NodePaths, ports: KubeletPorts, ca_file: Path, cert: Path, key: Path) -> dict:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": network.BRIDGE_IP,
        "port": ports.port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": ports.healthz,
        "tlsCertFile": str(cert),
        "tlsPrivateKeyFile": str(key),
        # The API server proves itself with a client certificate; the kubelet asks it (webhook) what
        # that identity may do, as a real node does.
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(ca_file)}},
        "authorization": {"mode": "Webhook"},
        "clusterDNS": [network.DNS_SERVICE_IP],
        "clusterDomain": network.CLUSTER_DOMAIN,
        # Pods never see the host's resolvers (they are outside this machine).
        "resolvConf": str(paths.resolv_conf),
        "containerRuntimeEndpoint": f"unix://{paths.containerd_socket}",
        "imageServiceEndpoint": f"unix://{paths.containerd_socket}",
        "staticPodPath": str(paths.static_pods),
        "podLogsDir": str(paths.pod_logs),
        "volumePluginDir": str(paths.volume_plugins),
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": "/",
        "cgroupsPerQOS": True,
        "enforceNodeAllocatable": ["pods"],
        "failSwapOn": False,
        # Only cgroup v1 exists here; kubelet 1.37 refuses it unless told otherwise.
        "failCgroupV1": False,
        # No CAP_SYS_RESOURCE: the kubelet must not lower its own oom_score_adj.
        "oomScoreAdj": 0,
        "evictionHard": {"memory.available": "200Mi", "nodefs.available": "2%", "imagefs.available": "2%",
                         "nodefs.inodesFree": "2%"},
        # The engine image is 6.6 GB and cannot be pulled again (there is no registry): never GC it.
        "imageGCHighThresholdPercent": 100,
        "serializeImagePulls": False,
        "maxPods": 110,
        "nodeStatusUpdateFrequency": "10s",
        "nodeStatusReportFrequency": "1m",
        "shutdownGracePeriod": "0s",
    }


def kubelet_command(kubelet: Path, paths: NodePaths, node_name: str, labels: dict[str, str]) -> list[str]:
    label_arg = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
    return [
        str(kubelet), f"--config={paths.kubelet_config}", f"--kubeconfig={paths.kubelet_kubeconfig}",
        f"--root-dir={paths.kubelet_root}", f"--cert-dir={paths.kubelet_root / 'pki'}",
        f"--hostname-override={node_name}", f"--node-ip={network.BRIDGE_IP}", f"--node-labels={label_arg}",
        "--v=1",
    ]


def confined_command(paths: NodePaths, command: list[str]) -> list[str]:
    """Runs `command` in a private mount namespace whose /proc/sys entries of KUBELET_SYSCTLS are
    stand-in files (initialised with the host's values), so the kubelet's sysctl writes stay there.

    The kubelet root dir is a shared mount made by the caller: volume mounts the kubelet makes
    under it propagate back to the host namespace, where containerd sees them."""
    binds = []
    for name in KUBELET_SYSCTLS:
        standin = paths.sysctl_standins / name.replace("/", ".")
        binds.append(f"cat /proc/sys/{name} > {shlex.quote(str(standin))} && "
                     f"mount --bind {shlex.quote(str(standin))} /proc/sys/{name}")
    script = " && ".join([
        f"mkdir -p {shlex.quote(str(paths.sysctl_standins))}",
        # /proc must not share mount events with the host, or the binds would show up there too.
        "mount --make-rprivate /proc",
        *binds,
        "exec " + shlex.join(command),
    ])
    return ["unshare", "--mount", "--propagation", "unchanged", "sh", "-c", script]


def gpu_capacity_patch(gpus: int) -> list[dict]:
    """JSON patch of the node's status that advertises GPUs as an extended resource (the documented
    way; the kubelet then carries it into allocatable)."""
    path = "/status/capacity/" + GPU_RESOURCE.replace("~", "~0").replace("/", "~1")
    return [{"op": "add", "path": path, "value": str(gpus)}]


def node_labels(gpus: int, gpu_product: str) -> dict[str, str]:
    return {
        "nvidia.com/gpu.product": gpu_product,
        "nvidia.com/gpu.count": str(gpus),
        "nvidia.com/gpu.present": "true",
        "serving.pixtral.dev/local-node": "true",
    }


def kube_proxy_command(kube_proxy: Path, paths: NodePaths, node_name: str, healthz_port: int,
                       metrics_port: int) -> list[str]:
    # These flags keep kube-proxy from touching host sysctls (conntrack sizes, route_localnet).
    return [
        str(kube_proxy), f"--kubeconfig={paths.kube_proxy_kubeconfig}", "--proxy-mode=iptables",
        f"--hostname-override={node_name}", f"--cluster-cidr={network.POD_CIDR}",
        f"--healthz-bind-address=127.0.0.1:{healthz_port}", f"--metrics-bind-address=127.0.0.1:{metrics_port}",
        "--conntrack-max-per-core=0", "--conntrack-tcp-timeout-established=0",
        "--conntrack-tcp-timeout-close-wait=0", "--iptables-localhost-nodeports=false",
        f"--nodeport-addresses={network.BRIDGE_IP}/32", "--v=1",
    ]
