"""Bringing the local cluster up and down: etcd, API server, controller-manager, scheduler, one real
node (containerd, kubelet, kube-proxy, kube-router's NetworkPolicy controller), CoreDNS as a pod,
and Prometheus, each host process recorded in .cluster/state.json. One cluster per machine: the
node's bridge, pod subnet and iptables rules are the machine's."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from . import addons, hoststate, images, monitoring, network, node, procs
from . import pki as pki_module
from .kube import ApiError, Credentials, KubeClient, ready
from .prometheus import ApiAccess, ScrapeSettings, render_config

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "e2e" / "tools" / "build-binaries.sh"
CACHE_ROOT = Path(os.environ.get("PIXTRAL_CACHE", Path.home() / ".cache" / "pixtral-operator"))
# containerd's content store and snapshots: kept across clusters, since the engine image takes
# minutes to import and no registry can give it back.
CONTAINERD_ROOT = CACHE_ROOT / "containerd"
SERVICE_CLUSTER_IP_RANGE = network.SERVICE_CIDR
COMPONENT_ORDER = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "containerd", "kubelet",
                   "kube-proxy", "kube-router", "prometheus")
# The claim of this machine's one cluster: which state dir runs it. Outside any checkout, so a second
# checkout sees it.
MACHINE_CLAIM = Path(tempfile.gettempdir()) / "pixtral-localcluster.claim"


class ClusterError(RuntimeError):
    """The cluster cannot be brought up or used; the message says why and where to look."""


@dataclass(frozen=True)
class ClusterPaths:
    state_dir: Path

    @classmethod
    def default(cls) -> ClusterPaths:
        return cls(Path(os.environ.get("PIXTRAL_CLUSTER_DIR", REPO_ROOT / ".cluster")).resolve())

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def host_before(self) -> Path:
        return self.state_dir / "host-before.json"

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    @property
    def pod_logs(self) -> Path:
        return self.node.pod_logs

    @property
    def pki(self) -> Path:
        return self.state_dir / "pki"

    @property
    def prometheus_url_file(self) -> Path:
        return self.state_dir / "prometheus-url"

    @property
    def prometheus_rules(self) -> Path:
        """Alert and recording rule files Prometheus loads (`*.yaml`, on /-/reload)."""
        return self.state_dir / "prometheus-rules"

    @property
    def node(self) -> node.NodePaths:
        return node.NodePaths(self.state_dir / "node")

    @property
    def volumes(self) -> Path:
        """Host directories behind the cluster's PersistentVolumes."""
        return self.state_dir / "volumes"

    @property
    def lock_file(self) -> Path:
        digest = hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"pixtral-localcluster-{digest}.lock"


@dataclass(frozen=True)
class Binaries:
    kube: Path
    etcd: Path
    helm: Path
    coredns: Path
    kube_router: Path
    crictl: Path
    prometheus: Path
    prometheus_operator: Path

    @property
    def kubectl(self) -> Path:
        return self.kube / "kubectl"

    @classmethod
    def locate(cls) -> Binaries:
        """The binaries built by e2e/tools/build-binaries.sh (its `paths` command names them)."""
        result = subprocess.run(["bash", str(BUILD_SCRIPT), "paths"], capture_output=True, text=True, check=True)
        found = dict(line.split("=", 1) for line in result.stdout.split())
        binaries = cls(*(Path(found[k]) for k in BINARY_KEYS))
        missing = [str(d) for d in binaries.to_dict().values() if not (Path(d) / ".complete").exists()]
        if missing:
            raise ClusterError(f"cluster binaries are not built yet ({', '.join(missing)}): run `make binaries`")
        return binaries

    def to_dict(self) -> dict[str, str]:
        return {name: str(getattr(self, name)) for name in self.__dataclass_fields__}


# `build-binaries.sh paths` names, in the order of Binaries' fields.
BINARY_KEYS = ("KUBE_BIN", "ETCD_BIN", "HELM_BIN", "COREDNS_BIN", "KUBE_ROUTER_BIN", "CRICTL_BIN",
               "PROMETHEUS_BIN", "PROMETHEUS_OPERATOR_BIN")


# Debian packages the node needs; `make system-deps` installs them.
NODE_PACKAGES = {"containerd": "containerd", "runc": "runc", "iptables": "iptables", "ipset": "ipset",
                 "conntrack": "conntrack", "unshare": "util-linux", "mmdebstrap": "mmdebstrap"}


def missing_packages() -> list[str]:
    missing = [pkg for cmd, pkg in NODE_PACKAGES.items() if shutil.which(cmd) is None]
    if not Path("/usr/lib/cni/bridge").exists():
        missing.append("containernetworking-plugins")
    return missing


@dataclass(frozen=True)
class NodePool:
    """The node's GPUs. One node: each kubelet needs a containerd of its own, and containerd 1.6 keeps
    runc state and shim sockets at the fixed /run/containerd (docs/local-cluster.md)."""
    gpus_per_node: int = 4
    gpu_product: str = "NVIDIA-A100-SXM4-80GB"
    count: int = 1

    @classmethod
    def from_env(cls) -> NodePool:
        return cls(int(os.environ.get("PIXTRAL_CLUSTER_GPUS", 4)),
                   os.environ.get("PIXTRAL_CLUSTER_GPU_PRODUCT", "NVIDIA-A100-SXM4-80GB"))

    def validate(self) -> None:
        if not 0 <= self.gpus_per_node <= 64:
            raise ClusterError(f"GPUs per node must be 0..64, got {self.gpus_per_node}")
        if not self.gpu_product or any(c.isspace() for c in self.gpu_product):
            raise ClusterError(f"GPU product must be a label value without spaces, got {self.gpu_product!r}")

    def names(self) -> list[str]:
        return [node.NODE_NAME]


@dataclass
class ClusterInfo:
    """What a running cluster offers its users (read from .cluster/state.json)."""
    paths: ClusterPaths
    state: dict

    @property
    def api_server(self) -> str:
        return self.state["api_server"]

    @property
    def kubeconfig(self) -> Path:
        return self.paths.kubeconfig

    @property
    def prometheus_url(self) -> str:
        """The host Prometheus (pod annotations), reachable from the host and from pods."""
        return self.state["prometheus_url"]

    @property
    def managed_prometheus_url(self) -> str:
        """The Prometheus the Prometheus Operator manages (PodMonitors), as the host reaches it."""
        return self.state["managed_prometheus_url"]

    @property
    def managed_prometheus_in_cluster_url(self) -> str:
        """The same Prometheus as pods reach it (by its Service's DNS name)."""
        return self.state["managed_prometheus_in_cluster_url"]

    @property
    def kubectl(self) -> Path:
        return Path(self.state["binaries"]["kube"]) / "kubectl"

    @property
    def helm(self) -> Path:
        return Path(self.state["binaries"]["helm"]) / "helm"

    @property
    def crictl(self) -> Path:
        return Path(self.state["binaries"]["crictl"]) / "crictl"

    @property
    def containerd_socket(self) -> Path:
        return self.paths.node.containerd_socket

    @property
    def nodes(self) -> dict:
        return self.state["nodes"]

    @property
    def images(self) -> dict[str, str]:
        return self.state.get("images", {})

    def credentials(self) -> Credentials:
        return Credentials(self.api_server, str(self.paths.pki / "ca.crt"), str(self.paths.pki / "admin.crt"),
                           str(self.paths.pki / "admin.key"))

    def client(self) -> KubeClient:
        return KubeClient(self.credentials())

    def records(self) -> list[procs.ProcessRecord]:
        return [procs.ProcessRecord.from_dict(r) for r in self.state.get("processes", [])]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def load_state(paths: ClusterPaths) -> dict | None:
    try:
        return json.loads(paths.state_file.read_text())
    except (OSError, ValueError):
        return None


def save_state(paths: ClusterPaths, state: dict) -> None:
    temporary = paths.state_file.with_suffix(".tmp")
    temporary.write_text(json.dumps(state, indent=2))
    temporary.replace(paths.state_file)


@contextlib.contextmanager
def cluster_lock(paths: ClusterPaths) -> Iterator[None]:
    """Serialises up/down between processes (two test sessions may start at once)."""
    with open(paths.lock_file, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def claim_conflict(claim_text: str | None, state_dir: Path, bridge_exists: bool) -> str | None:
    """Why this state dir may not start a cluster on this machine, or None (pure)."""
    if claim_text:
        other = claim_text.strip()
        if other and other != str(state_dir) and Path(other).exists():
            return (f"a local cluster already runs on this machine from {other}; one cluster per machine "
                    f"(the node's bridge {network.BRIDGE}, pod subnet {network.POD_CIDR} and iptables rules "
                    f"are shared). Stop it first: `make cluster-down` in {Path(other).parent}, or "
                    f"`PIXTRAL_CLUSTER_DIR={other} python e2e/cluster.py down`")
    elif bridge_exists:
        return (f"the network interface {network.BRIDGE} already exists but no local cluster claims this machine "
                f"({MACHINE_CLAIM} is missing): something else uses it; remove it with "
                f"`ip link delete {network.BRIDGE}` if it is a leftover")
    return None


def _claim_machine(paths: ClusterPaths) -> None:
    claim = MACHINE_CLAIM.read_text() if MACHINE_CLAIM.exists() else None
    conflict = claim_conflict(claim, paths.state_dir, network.bridge_exists() and claim is None)
    if conflict:
        raise ClusterError(conflict)
    MACHINE_CLAIM.write_text(f"{paths.state_dir}\n")


def _release_machine(paths: ClusterPaths) -> None:
    with contextlib.suppress(OSError):
        if MACHINE_CLAIM.read_text().strip() == str(paths.state_dir):
            MACHINE_CLAIM.unlink()


def wait_until(check: Callable[[], bool], timeout: float, what: str, logs: list[Path] = ()) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    tails = "".join(f"\n--- last lines of {p}:\n{_tail(p)}" for p in logs)
    raise ClusterError(f"timed out after {timeout:g}s waiting for {what}{tails}")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def running_info(paths: ClusterPaths) -> ClusterInfo | None:
    """The running cluster, if every recorded process lives and the API server is ready."""
    state = load_state(paths)
    if not state or not state.get("complete"):
        return None
    info = ClusterInfo(paths, state)
    if not all(record.alive() for record in info.records()):
        return None
    client = info.client()
    try:
        return info if ready(client) else None
    finally:
        client.close()


def write_kubeconfig(path: Path, server: str, ca: Path, cert: Path, key: Path, user: str) -> None:
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "pixtral-local",
        "clusters": [{"name": "pixtral-local", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": user, "user": {"client-certificate": str(cert), "client-key": str(key)}}],
        "contexts": [{"name": "pixtral-local", "context": {"cluster": "pixtral-local", "user": user}}],
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)


def _component_commands(paths: ClusterPaths, binaries: Binaries, ports: dict,
                        pki: pki_module.Pki) -> dict[str, list[str]]:
    state_dir = paths.state_dir
    etcd_url = f"http://127.0.0.1:{ports['etcd']}"
    kcm_config = state_dir / "kube-controller-manager.kubeconfig"
    scheduler_config = state_dir / "kube-scheduler.kubeconfig"
    node_paths = paths.node
    return {
        "etcd": [
            str(binaries.etcd / "etcd"), "--name=local", f"--data-dir={state_dir / 'etcd'}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{ports['etcd_peer']}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{ports['etcd_peer']}",
            f"--initial-cluster=local=http://127.0.0.1:{ports['etcd_peer']}",
            "--unsafe-no-fsync", "--log-level=warn", "--quota-backend-bytes=2147483648",
            "--auto-compaction-mode=periodic", "--auto-compaction-retention=5m",
        ],
        # On the bridge address: pods reach it through the `kubernetes` Service, host tools directly.
        "kube-apiserver": [
            str(binaries.kube / "kube-apiserver"), f"--etcd-servers={etcd_url}",
            f"--bind-address={network.BRIDGE_IP}", f"--secure-port={ports['apiserver']}",
            f"--advertise-address={network.BRIDGE_IP}",
            f"--tls-cert-file={pki.cert('apiserver')}", f"--tls-private-key-file={pki.key('apiserver')}",
            f"--client-ca-file={pki.ca_cert}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki.sa_pub}", f"--service-account-signing-key-file={pki.sa_key}",
            "--authorization-mode=Node,RBAC", f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--enable-admission-plugins=NodeRestriction,OwnerReferencesPermissionEnforcement",
            "--allow-privileged=true", "--enable-priority-and-fairness=false", "--profiling=false",
            f"--cert-dir={state_dir / 'apiserver-certs'}", "--event-ttl=1h", "--v=1",
            f"--kubelet-client-certificate={pki.cert('apiserver-kubelet-client')}",
            f"--kubelet-client-key={pki.key('apiserver-kubelet-client')}",
            f"--kubelet-certificate-authority={pki.ca_cert}", "--kubelet-preferred-address-types=InternalIP",
        ],
        "kube-controller-manager": [
            str(binaries.kube / "kube-controller-manager"), f"--kubeconfig={kcm_config}",
            f"--authentication-kubeconfig={kcm_config}", f"--authorization-kubeconfig={kcm_config}",
            "--bind-address=127.0.0.1", f"--secure-port={ports['kcm']}", f"--cert-dir={state_dir / 'kcm-certs'}",
            "--use-service-account-credentials=true", f"--service-account-private-key-file={pki.sa_key}",
            f"--root-ca-file={pki.ca_cert}", f"--cluster-signing-cert-file={pki.ca_cert}",
            f"--cluster-signing-key-file={pki.ca_key}", "--leader-elect=false",
            # Not the default /usr/libexec/kubernetes/...: nothing outside the state dir.
            f"--flex-volume-plugin-dir={node_paths.volume_plugins}",
            # The node lifecycle controller lifts the kubelet's registration taint (not-ready) once
            # the node is Ready; a heartbeat delayed on a busy 2-core machine (vLLM engines take both
            # cores) must not mark the only node unhealthy and evict every pod, hence the long grace.
            "--node-monitor-grace-period=300s",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}", "--v=1",
        ],
        "kube-scheduler": [
            str(binaries.kube / "kube-scheduler"), f"--kubeconfig={scheduler_config}",
            f"--authentication-kubeconfig={scheduler_config}", f"--authorization-kubeconfig={scheduler_config}",
            "--bind-address=127.0.0.1", f"--secure-port={ports['scheduler']}",
            f"--cert-dir={state_dir / 'scheduler-certs'}", "--leader-elect=false", "--v=1",
        ],
        "containerd": ["containerd", f"--config={node_paths.containerd_config}"],
        "kubelet": node.confined_command(node_paths, node.kubelet_command(
            binaries.kube / "kubelet", node_paths, node.NODE_NAME, ports["node_labels"])),
        "kube-proxy": node.kube_proxy_command(binaries.kube / "kube-proxy", node_paths, node.NODE_NAME,
                                              ports["kube_proxy_healthz"], ports["kube_proxy_metrics"]),
        "kube-router": addons.kube_router_command(str(binaries.kube_router / "kube-router"),
                                                  str(state_dir / "kube-router.kubeconfig"), node.NODE_NAME,
                                                  ports["kube_router_health"]),
        "prometheus": [
            str(binaries.prometheus / "prometheus"),
            f"--config.file={state_dir / 'prometheus.yml'}",
            f"--storage.tsdb.path={state_dir / 'prometheus'}", "--storage.tsdb.retention.time=2h",
            # On the node address: the operator's pod queries it (the autoscaler), the host too.
            f"--web.listen-address={network.BRIDGE_IP}:{ports['prometheus']}", "--web.enable-lifecycle",
            "--log.level=warn",
        ],
    }


def up(paths: ClusterPaths | None = None, nodes: NodePool | None = None, owner: str = "cli",
       say: Callable[[str], None] = print, timeout: float = 120.0) -> ClusterInfo:
    """Starts the cluster, or returns the running one. Idempotent."""
    paths = paths or ClusterPaths.default()
    nodes = nodes or NodePool.from_env()
    nodes.validate()
    if os.geteuid() != 0:
        raise ClusterError("the local cluster runs a real kubelet and containerd: run it as root")
    paths.state_dir.parent.mkdir(parents=True, exist_ok=True)
    with cluster_lock(paths):
        info = running_info(paths)
        if info is not None:
            say(f"local cluster already running (API server {info.api_server})")
            return info
        if paths.state_dir.exists():
            say("found a stopped or broken local cluster: cleaning it up first")
            _down_locked(paths, say)
        missing = missing_packages()
        if missing:
            raise ClusterError(f"Debian packages missing: {' '.join(missing)}: run `make system-deps`")
        binaries = Binaries.locate()
        _claim_machine(paths)
        started = time.monotonic()
        try:
            info = _start(paths, binaries, nodes, owner, say, timeout)
        except BaseException:
            say(f"cluster start failed; component logs kept in {paths.logs}")
            _stop_everything(paths, say, keep_logs=True)
            raise
        say(f"local cluster up in {time.monotonic() - started:.1f}s")
        return info


# kind -> resource of what the cluster applies itself (add-ons, the monitoring stack).
APPLIED_KINDS = {"ServiceAccount": "serviceaccounts", "ClusterRole": "clusterroles",
                 "ClusterRoleBinding": "clusterrolebindings", "ConfigMap": "configmaps",
                 "Deployment": "deployments", "Service": "services", "Namespace": "namespaces",
                 "CustomResourceDefinition": "customresourcedefinitions", "Prometheus": "prometheuses"}


def _apply(client: KubeClient, manifests: list[dict]) -> None:
    """Creates each object, or replaces it when it exists (server-side apply with force)."""
    for obj in manifests:
        kind, name = obj["kind"], obj["metadata"]["name"]
        namespace = obj["metadata"].get("namespace")
        group_version = obj["apiVersion"]
        base = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
        plural = APPLIED_KINDS[kind]
        scope = f"/namespaces/{namespace}" if namespace else ""
        client.request("PATCH", f"{base}{scope}/{plural}/{name}", obj,
                       params={"fieldManager": "pixtral-localcluster", "force": "true"},
                       content_type="application/apply-patch+yaml")


def _write_node_files(paths: ClusterPaths, pki: pki_module.Pki, ports: dict, api_server: str,
                      sandbox_image: str) -> None:
    node_paths = paths.node
    for directory in (node_paths.containerd_state, node_paths.cni_conf_dir, node_paths.cni_ipam_dir,
                      node_paths.kubelet_root, node_paths.static_pods, node_paths.pod_logs,
                      node_paths.volume_plugins, node_paths.sysctl_standins, CONTAINERD_ROOT):
        directory.mkdir(parents=True, exist_ok=True)
    node_paths.containerd_config.write_text(
        node.containerd_config(node_paths, sandbox_image, CONTAINERD_ROOT))
    (node_paths.cni_conf_dir / "10-pixtral-local.conflist").write_text(
        json.dumps(network.cni_conflist(str(node_paths.cni_ipam_dir)), indent=2))
    node_paths.resolv_conf.write_text("")
    kubelet_ports = node.KubeletPorts(ports["kubelet"], ports["kubelet_healthz"])
    node_paths.kubelet_config.write_text(yaml.safe_dump(node.kubelet_config(
        node_paths, kubelet_ports, pki.ca_cert, pki.cert("kubelet"), pki.key("kubelet")), sort_keys=False))
    write_kubeconfig(node_paths.kubelet_kubeconfig, api_server, pki.ca_cert, pki.cert("kubelet-client"),
                     pki.key("kubelet-client"), "kubelet")
    write_kubeconfig(node_paths.kube_proxy_kubeconfig, api_server, pki.ca_cert, pki.cert("kube-proxy"),
                     pki.key("kube-proxy"), "kube-proxy")
    write_kubeconfig(paths.state_dir / "kube-router.kubeconfig", api_server, pki.ca_cert, pki.cert("kube-router"),
                     pki.key("kube-router"), "kube-router")


def _system_images(socket_path: str, binaries: Binaries, say: Callable[[str], None]) -> dict[str, str]:
    """The sandbox (pause), CoreDNS and monitoring images, built here and imported before the kubelet
    starts."""
    cache = images.cache_root(os.environ, Path.home())
    built = {
        "pause": images.pause_image(cache, binaries.kube / "pause", images.version_of(str(binaries.kube)), say=say),
        "coredns": images.coredns_image(cache, binaries.coredns / "coredns",
                                        images.version_of(str(binaries.coredns)), say=say),
        **images.monitoring_images(cache, {"PROMETHEUS_BIN": str(binaries.prometheus),
                                           "PROMETHEUS_OPERATOR_BIN": str(binaries.prometheus_operator)}, say=say),
    }
    for image in built.values():
        images.import_image(socket_path, image, say=say)
    return {name: image.ref for name, image in built.items()}


def _start_monitoring(client: KubeClient, binaries: Binaries, refs: dict[str, str], log: Path,
                      say: Callable[[str], None]) -> None:
    """The Prometheus Operator and the Prometheus it manages (localcluster/monitoring.py)."""
    image_refs = monitoring.MonitoringImages(
        prometheus=refs["prometheus"], prometheus_release=images.prometheus_release(str(binaries.prometheus)),
        operator=refs["prometheus-operator"], config_reloader=refs["prometheus-config-reloader"])
    crds = monitoring.crds(binaries.prometheus_operator)
    _apply(client, [monitoring.namespace(), *crds])
    for crd in crds:
        wait_until(lambda crd=crd: _crd_established(client, crd["metadata"]["name"]), 60,
                   f"CRD {crd['metadata']['name']} Established", [])
    _apply(client, monitoring.operator_manifests(binaries.prometheus_operator, image_refs)
           + monitoring.prometheus_manifests(binaries.prometheus_operator, image_refs))
    wait_until(lambda: _deployment_available(client, monitoring.NAMESPACE, monitoring.OPERATOR_NAME), 120,
               "the Prometheus Operator Available", [log])
    wait_until(lambda: _http_ok(f"{monitoring.host_url()}/-/ready"), 180,
               f"the Prometheus Operator's Prometheus /-/ready at {monitoring.host_url()}", [log])
    say(f"Prometheus Operator {images.version_of(str(binaries.prometheus_operator))} manages "
        f"{monitoring.NAMESPACE}/{monitoring.PROMETHEUS_NAME} at {monitoring.host_url()}")


def _share_kubelet_root(node_paths: node.NodePaths) -> None:
    """The kubelet runs in a mount namespace of its own; its root dir is a shared mount so the volume
    mounts it makes there reach containerd in the host namespace."""
    root = str(node_paths.kubelet_root)
    mounted = any(line.split()[4] == root for line in Path("/proc/self/mountinfo").read_text().splitlines())
    if not mounted:
        subprocess.run(["mount", "--bind", root, root], check=True)
    subprocess.run(["mount", "--make-shared", root], check=True)


def _start(paths: ClusterPaths, binaries: Binaries, nodes: NodePool, owner: str,
           say: Callable[[str], None], timeout: float) -> ClusterInfo:
    paths.state_dir.mkdir(parents=True, exist_ok=True)
    paths.logs.mkdir(parents=True, exist_ok=True)
    paths.volumes.mkdir(parents=True, exist_ok=True)
    paths.host_before.write_text(hoststate.read().to_json())
    pki = pki_module.create(paths.pki)
    network.create_bridge()
    network.install_isolation()
    ports = {name: free_port() for name in ("etcd", "etcd_peer", "kcm", "scheduler",
                                            "kubelet_healthz", "kube_proxy_healthz", "kube_proxy_metrics",
                                            "kube_router_health")}
    ports["apiserver"] = free_port(network.BRIDGE_IP)
    ports["kubelet"] = free_port(network.BRIDGE_IP)
    ports["prometheus"] = free_port(network.BRIDGE_IP)
    ports["node_labels"] = node.node_labels(nodes.gpus_per_node, nodes.gpu_product)
    api_server = f"https://{network.BRIDGE_IP}:{ports['apiserver']}"
    write_kubeconfig(paths.kubeconfig, api_server, pki.ca_cert, pki.cert("admin"), pki.key("admin"), "admin")
    for component in ("kube-controller-manager", "kube-scheduler"):
        write_kubeconfig(paths.state_dir / f"{component}.kubeconfig", api_server, pki.ca_cert, pki.cert(component),
                         pki.key(component), component)
    prometheus_url = f"http://{network.BRIDGE_IP}:{ports['prometheus']}"
    paths.prometheus_rules.mkdir(parents=True, exist_ok=True)
    api_access = ApiAccess(api_server, str(pki.ca_cert), str(pki.cert("prometheus")), str(pki.key("prometheus")))
    settings = ScrapeSettings(api_access,
                              rule_files=(str(paths.prometheus_rules / "*.yaml"),))
    (paths.state_dir / "prometheus.yml").write_text(yaml.safe_dump(render_config(settings), sort_keys=False))
    sandbox_image = images.pause_ref(images.version_of(str(binaries.kube)))
    _write_node_files(paths, pki, ports, api_server, sandbox_image)
    state = {
        "api_server": api_server, "prometheus_url": prometheus_url, "ports": ports, "owner": owner,
        "starter_pid": os.getpid(), "binaries": binaries.to_dict(),
        "nodes": {"names": nodes.names(), "gpus_per_node": nodes.gpus_per_node, "gpu_product": nodes.gpu_product},
        "processes": [], "complete": False,
    }
    save_state(paths, state)
    commands = _component_commands(paths, binaries, ports, pki)

    def launch(name: str) -> None:
        record = procs.spawn(name, commands[name], paths.logs / f"{name}.log", env=dict(os.environ),
                             cwd=paths.state_dir)
        state["processes"].append(record.to_dict())
        save_state(paths, state)

    log_of = {name: paths.logs / f"{name}.log" for name in COMPONENT_ORDER}
    launch("etcd")
    wait_until(lambda: _http_ok(f"http://127.0.0.1:{ports['etcd']}/health"), 30, "etcd", [log_of["etcd"]])
    launch("kube-apiserver")
    launch("containerd")
    client = KubeClient(Credentials(api_server, str(pki.ca_cert), str(pki.cert("admin")), str(pki.key("admin"))))
    try:
        wait_until(lambda: ready(client), timeout, "kube-apiserver /readyz", [log_of["kube-apiserver"]])
        say(f"API server ready at {api_server}")
        _apply(client, addons.kubelet_api_rbac(pki_module.CLIENTS["apiserver-kubelet-client"][0])
               + addons.kube_router_rbac() + addons.prometheus_rbac())
        for name in ("kube-controller-manager", "kube-scheduler"):
            launch(name)
        wait_until(lambda: paths.node.containerd_socket.exists(), 30, "containerd's socket", [log_of["containerd"]])
        state["images"] = _system_images(str(paths.node.containerd_socket), binaries, say)
        save_state(paths, state)
        _share_kubelet_root(paths.node)
        for name in ("kubelet", "kube-proxy", "prometheus"):
            launch(name)
        node_path = f"/api/v1/nodes/{node.NODE_NAME}"
        wait_until(lambda: _exists(client, node_path), 60, f"node {node.NODE_NAME} to register", [log_of["kubelet"]])
        # kube-router finds its node by name at start: only once the kubelet has registered it.
        launch("kube-router")
        client.request("PATCH", f"{node_path}/status", node.gpu_capacity_patch(nodes.gpus_per_node),
                       content_type="application/json-patch+json")
        wait_until(lambda: _https_ok(f"https://127.0.0.1:{ports['kcm']}/healthz"), 60,
                   "kube-controller-manager /healthz", [log_of["kube-controller-manager"]])
        wait_until(lambda: _https_ok(f"https://127.0.0.1:{ports['scheduler']}/healthz"), 60,
                   "kube-scheduler /healthz", [log_of["kube-scheduler"]])
        wait_until(lambda: _nodes_ready(client, nodes.names(), nodes.gpus_per_node), 90,
                   f"node {node.NODE_NAME} Ready with {nodes.gpus_per_node} nvidia.com/gpu", [log_of["kubelet"]])
        wait_until(lambda: _exists(client, "/api/v1/namespaces/kube-system/serviceaccounts/default"), 60,
                   "the kube-system ServiceAccounts (controller-manager)", [log_of["kube-controller-manager"]])
        _apply(client, addons.coredns_manifests(state["images"]["coredns"]))
        wait_until(lambda: _deployment_available(client, addons.DNS_NAMESPACE, addons.DNS_NAME), 120,
                   "CoreDNS Available", [log_of["kubelet"]])
        wait_until(lambda: _exists(client, "/api/v1/namespaces/default/serviceaccounts/default"), 60,
                   "the default ServiceAccount (controller-manager)", [log_of["kube-controller-manager"]])
        wait_until(lambda: _http_ok(f"{prometheus_url}/-/ready"), 60, "prometheus /-/ready", [log_of["prometheus"]])
        _start_monitoring(client, binaries, state["images"], log_of["kubelet"], say)
        state["managed_prometheus_url"] = monitoring.host_url()
        state["managed_prometheus_in_cluster_url"] = monitoring.in_cluster_url()
    finally:
        client.close()
    paths.prometheus_url_file.write_text(prometheus_url + "\n")
    state["complete"] = True
    state["started_at"] = time.time()
    save_state(paths, state)
    return ClusterInfo(paths, state)


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _https_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2, verify=False).status_code == 200
    except httpx.HTTPError:
        return False


def _exists(client: KubeClient, path: str) -> bool:
    try:
        return client.get_or_none(path) is not None
    except (httpx.HTTPError, ApiError):
        return False


def _crd_established(client: KubeClient, name: str) -> bool:
    try:
        crd = client.get_or_none(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
    except (httpx.HTTPError, ApiError):
        return False
    conditions = ((crd or {}).get("status") or {}).get("conditions") or []
    return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)


def _deployment_available(client: KubeClient, namespace: str, name: str) -> bool:
    try:
        deployment = client.get_or_none(f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}")
    except (httpx.HTTPError, ApiError):
        return False
    return bool(deployment) and (deployment.get("status") or {}).get("availableReplicas", 0) >= 1


def _nodes_ready(client: KubeClient, names: list[str], gpus: int) -> bool:
    for name in names:
        try:
            found = client.get_or_none(f"/api/v1/nodes/{name}")
        except (httpx.HTTPError, ApiError):
            return False
        if found is None:
            return False
        conditions = {c["type"]: c["status"] for c in found.get("status", {}).get("conditions", [])}
        allocatable = found.get("status", {}).get("allocatable", {})
        if conditions.get("Ready") != "True" or allocatable.get(node.GPU_RESOURCE, "0") != str(gpus):
            return False
    return True


def down(paths: ClusterPaths | None = None, say: Callable[[str], None] = print) -> None:
    """Stops exactly the processes `up` recorded, removes every pod, puts the host back as it was
    and removes the cluster state."""
    paths = paths or ClusterPaths.default()
    with cluster_lock(paths):
        _down_locked(paths, say)


def _down_locked(paths: ClusterPaths, say: Callable[[str], None]) -> None:
    leftovers = _stop_everything(paths, say, keep_logs=False)
    if leftovers:
        raise ClusterError(f"the host is not as it was before `up`: {leftovers}")


def crictl_command(crictl: Path, socket_path: Path) -> list[str]:
    """crictl pointed at the node's containerd (it would look for the default socket otherwise)."""
    endpoint = f"unix://{socket_path}"
    return [str(crictl), f"--runtime-endpoint={endpoint}", f"--image-endpoint={endpoint}"]


def _remove_pods(paths: ClusterPaths, state: dict, say: Callable[[str], None]) -> None:
    """Every pod sandbox (and its containers) through the CRI, so CNI releases addresses and
    network namespaces; then the shims of this containerd, should any outlive it."""
    crictl = Path(state.get("binaries", {}).get("crictl", "")) / "crictl"
    socket_path = paths.node.containerd_socket
    if crictl.exists() and socket_path.exists():
        with contextlib.suppress(subprocess.TimeoutExpired):
            result = subprocess.run([*crictl_command(crictl, socket_path), "--timeout=60s", "rmp", "--all", "--force"],
                                    capture_output=True, text=True, timeout=180)
            if result.returncode != 0:
                say(f"crictl rmp: {result.stderr.strip()[:300]}")


def _shims_of(socket_path: Path) -> list[procs.ProcessRecord]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if argv and argv[0].endswith(b"containerd-shim-runc-v2") and str(socket_path).encode() in argv:
                started = procs.start_time(int(proc.name))
                if started is not None:
                    found.append(procs.ProcessRecord("containerd-shim", int(proc.name), started))
    return found


def _stop_everything(paths: ClusterPaths, say: Callable[[str], None], keep_logs: bool) -> dict:
    state = load_state(paths) or {}
    records = {r["name"]: procs.ProcessRecord.from_dict(r) for r in state.get("processes", [])}

    def stop(name: str, grace: float = 10) -> None:
        record = records.get(name)
        if record is not None and record.alive():
            procs.stop(record, grace_seconds=grace)
            say(f"stopped {name} (pid {record.pid})")

    for name in ("prometheus", "kubelet"):
        stop(name)
    _remove_pods(paths, state, say)
    stop("containerd")
    for shim in _shims_of(paths.node.containerd_socket):
        procs.stop(shim, grace_seconds=5)
    binaries = state.get("binaries", {})
    for name in ("kube-router", "kube-proxy"):
        stop(name)
    # Each removes the iptables chains and ipsets it made; hoststate then catches anything else.
    _cleanup_command([str(Path(binaries.get("kube", "")) / "kube-proxy"), "--cleanup"])
    _cleanup_command([str(Path(binaries.get("kube_router", "")) / "kube-router"), "--cleanup-config"])
    for name in ("kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"):
        stop(name)
    leftovers: dict = {}
    if paths.host_before.exists():
        leftovers = hoststate.restore(hoststate.HostState.from_json(paths.host_before.read_text()))
    if paths.state_dir.exists():
        if keep_logs:
            # A failed start keeps its component logs for the error message's reader.
            for child in paths.state_dir.iterdir():
                if child == paths.logs:
                    continue
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink()
        else:
            shutil.rmtree(paths.state_dir, ignore_errors=True)
            say(f"removed {paths.state_dir}")
    _release_machine(paths)
    return leftovers


def _cleanup_command(argv: list[str]) -> None:
    if Path(argv[0]).exists():
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            subprocess.run(argv, capture_output=True, timeout=60)


def join_session(paths: ClusterPaths) -> Path:
    """Marks a test session as a user of the running cluster (see leave_session)."""
    sessions = paths.state_dir / "sessions"
    sessions.mkdir(parents=True, exist_ok=True)
    marker = sessions / str(os.getpid())
    marker.write_text(str(procs.start_time(os.getpid())))
    return marker


def session_alive(marker: Path) -> bool:
    """Whether the process a session marker names still runs (its pid with the same start time)."""
    try:
        return procs.start_time(int(marker.name)) == int(marker.read_text())
    except ValueError:
        return False


def other_sessions_alive(paths: ClusterPaths) -> bool:
    """Whether any session marker left names a live process (call after leaving your own)."""
    sessions = paths.state_dir / "sessions"
    return any(session_alive(m) for m in sessions.glob("*")) if sessions.is_dir() else False


def leave_session(paths: ClusterPaths, marker: Path, keep: bool) -> bool:
    """Ends a session's use of the cluster. Stops it only when this process started it as a test
    session (owner "pytest"), keep is false and no other session still uses it; if others do, the
    duty passes to one of them. Returns whether it stopped the cluster."""
    marker.unlink(missing_ok=True)
    with cluster_lock(paths):
        state = load_state(paths)
        if keep or not state or state.get("owner") != "pytest" or state.get("starter_pid") != os.getpid():
            return False
        sessions = paths.state_dir / "sessions"
        for other in sorted(sessions.glob("*")) if sessions.is_dir() else []:
            if session_alive(other):
                state["starter_pid"] = int(other.name)
                save_state(paths, state)
                return False
            other.unlink(missing_ok=True)
        _down_locked(paths, print)
        return True


def status(paths: ClusterPaths | None = None) -> tuple[bool, list[str]]:
    paths = paths or ClusterPaths.default()
    state = load_state(paths)
    if not state:
        return False, [f"no local cluster ({paths.state_dir} has no state)"]
    info = ClusterInfo(paths, state)
    lines = [f"API server:  {info.api_server}", f"kubeconfig:  {paths.kubeconfig}",
             f"Prometheus:  {state['prometheus_url']} (pod annotations), "
             f"{state.get('managed_prometheus_url', 'not started')} (Prometheus Operator)",
             f"logs:        {paths.logs}"]
    healthy = bool(state.get("complete"))
    for record in info.records():
        alive = record.alive()
        healthy &= alive
        lines.append(f"  {record.name:<24} pid {record.pid:<8} {'running' if alive else 'NOT RUNNING'}")
    if healthy:
        client = info.client()
        try:
            nodes = client.get("/api/v1/nodes")["items"]
            pods = client.get("/api/v1/pods")["items"]
        except (httpx.HTTPError, Exception) as error:  # noqa: BLE001 - status reports, never raises
            lines.append(f"API not answering: {error}")
            return False, lines
        finally:
            client.close()
        for item in nodes:
            node_ready = {c["type"]: c["status"] for c in item["status"].get("conditions", [])}.get("Ready")
            gpus = item["status"].get("allocatable", {}).get(node.GPU_RESOURCE, "0")
            runtime = item["status"].get("nodeInfo", {}).get("containerRuntimeVersion", "?")
            lines.append(f"  node {item['metadata']['name']:<19} Ready={node_ready} {node.GPU_RESOURCE}={gpus} "
                         f"runtime={runtime}")
        lines.append(f"  pods: {len(pods)}")
    return healthy, lines


def usage(info: ClusterInfo) -> str:
    return "\n".join([
        "",
        "The local cluster is running:",
        f"  export KUBECONFIG={info.kubeconfig}",
        f"  export PATH={info.kubectl.parent}:{info.helm.parent}:$PATH",
        "  kubectl get nodes",
        f"  Prometheus:       {info.prometheus_url}   (pod annotations; also in {info.paths.prometheus_url_file})",
        f"  Prometheus:       {info.managed_prometheus_url}   (the Prometheus Operator's, PodMonitors; "
        f"{info.managed_prometheus_in_cluster_url} from pods)",
        f"  component logs:   {info.paths.logs}/",
        f"  pod logs:         kubectl logs -n <namespace> <pod>   (files: {info.paths.pod_logs}/)",
        f"  containers:       {info.crictl} --runtime-endpoint unix://{info.containerd_socket} ps",
        "  stop it with:     make cluster-down",
    ])
