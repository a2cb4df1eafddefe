"""Bringing the local cluster up and down: etcd, API server, controller-manager, scheduler,
the node agent and Prometheus, each a background process recorded in .cluster/state.json."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from . import pki as pki_module
from . import procs
from .agent import kill_recorded_processes
from .kube import Credentials, KubeClient, ready
from .prometheus import ScrapeSettings, render_config

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "e2e" / "tools" / "build-binaries.sh"
SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"
COMPONENT_ORDER = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "nodeagent", "prometheus")


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
    def logs(self) -> Path:
        return self.state_dir / "logs"

    @property
    def pod_logs(self) -> Path:
        return self.logs / "pods"

    @property
    def pki(self) -> Path:
        return self.state_dir / "pki"

    @property
    def prometheus_url_file(self) -> Path:
        return self.state_dir / "prometheus-url"

    @property
    def agent_dir(self) -> Path:
        return self.state_dir / "agent"

    @property
    def lock_file(self) -> Path:
        digest = hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"pixtral-localcluster-{digest}.lock"


@dataclass(frozen=True)
class Binaries:
    kube: Path
    etcd: Path
    helm: Path

    @property
    def kubectl(self) -> Path:
        return self.kube / "kubectl"

    @classmethod
    def locate(cls) -> Binaries:
        """The binaries built by e2e/tools/build-binaries.sh (its `paths` command names them)."""
        result = subprocess.run(["bash", str(BUILD_SCRIPT), "paths"], capture_output=True, text=True, check=True)
        found = dict(line.split("=", 1) for line in result.stdout.split())
        binaries = cls(Path(found["KUBE_BIN"]), Path(found["ETCD_BIN"]), Path(found["HELM_BIN"]))
        missing = [str(d) for d in (binaries.kube, binaries.etcd, binaries.helm) if not (d / ".complete").exists()]
        if missing:
            raise ClusterError(f"cluster binaries are not built yet ({', '.join(missing)}): run `make binaries`")
        return binaries


@dataclass(frozen=True)
class NodePool:
    count: int = 2
    gpus_per_node: int = 4
    gpu_product: str = "NVIDIA-A100-SXM4-80GB"
    name_prefix: str = "gpu-node"
    # Pod IPs are 127.0.<x>.<2..254> for x in this range; a second cluster on the machine (e.g. a
    # benchmark's) takes a range of its own so no two pods share an address.
    pod_ip_octets: tuple[int, int] = (10, 199)

    @classmethod
    def from_env(cls) -> NodePool:
        octets = os.environ.get("PIXTRAL_CLUSTER_POD_IP_OCTETS", "10-199")
        low, _, high = octets.partition("-")
        if not (low.isdigit() and high.isdigit()):
            raise ClusterError(f"PIXTRAL_CLUSTER_POD_IP_OCTETS must look like 10-199, got {octets!r}")
        return cls(int(os.environ.get("PIXTRAL_CLUSTER_NODES", 2)), int(os.environ.get("PIXTRAL_CLUSTER_GPUS", 4)),
                   os.environ.get("PIXTRAL_CLUSTER_GPU_PRODUCT", "NVIDIA-A100-SXM4-80GB"),
                   pod_ip_octets=(int(low), int(high)))

    def validate(self) -> None:
        if not 1 <= self.count <= 64:
            raise ClusterError(f"node count must be 1..64, got {self.count}")
        if not 0 <= self.gpus_per_node <= 64:
            raise ClusterError(f"GPUs per node must be 0..64, got {self.gpus_per_node}")
        low, high = self.pod_ip_octets
        if not 1 <= low <= high <= 254:
            raise ClusterError(f"pod IP octet range must lie within 1..254, got {self.pod_ip_octets}")
        if not self.gpu_product or any(c.isspace() for c in self.gpu_product):
            raise ClusterError(f"GPU product must be a label value without spaces, got {self.gpu_product!r}")

    def names(self) -> list[str]:
        return [f"{self.name_prefix}-{i}" for i in range(self.count)]


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
        return self.state["prometheus_url"]

    @property
    def kubectl(self) -> Path:
        return Path(self.state["binaries"]["kube"]) / "kubectl"

    @property
    def helm(self) -> Path:
        return Path(self.state["binaries"]["helm"]) / "helm"

    @property
    def nodes(self) -> dict:
        return self.state["nodes"]

    def credentials(self) -> Credentials:
        return Credentials(self.api_server, str(self.paths.pki / "ca.crt"), str(self.paths.pki / "admin.crt"),
                           str(self.paths.pki / "admin.key"))

    def client(self) -> KubeClient:
        return KubeClient(self.credentials())

    def records(self) -> list[procs.ProcessRecord]:
        return [procs.ProcessRecord.from_dict(r) for r in self.state.get("processes", [])]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
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
        return info if _api_ready(client) else None
    finally:
        client.close()


def _api_ready(client: KubeClient) -> bool:
    return ready(client)


def write_kubeconfig(path: Path, server: str, ca: Path, cert: Path, key: Path, user: str) -> None:
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "pixtral-local",
        "clusters": [{"name": "pixtral-local", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": user, "user": {"client-certificate": str(cert), "client-key": str(key)}}],
        "contexts": [{"name": "pixtral-local", "context": {"cluster": "pixtral-local", "user": user}}],
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)


def _component_commands(paths: ClusterPaths, binaries: Binaries, ports: dict, nodes: NodePool,
                        pki: pki_module.Pki) -> dict[str, list[str]]:
    state_dir = paths.state_dir
    api_server = f"https://127.0.0.1:{ports['apiserver']}"
    etcd_url = f"http://127.0.0.1:{ports['etcd']}"
    kcm_config = state_dir / "kube-controller-manager.kubeconfig"
    scheduler_config = state_dir / "kube-scheduler.kubeconfig"
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
        "kube-apiserver": [
            str(binaries.kube / "kube-apiserver"), f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1", f"--secure-port={ports['apiserver']}", "--advertise-address=127.0.0.1",
            "--endpoint-reconciler-type=none",
            f"--tls-cert-file={pki.cert('apiserver')}", f"--tls-private-key-file={pki.key('apiserver')}",
            f"--client-ca-file={pki.ca_cert}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki.sa_pub}", f"--service-account-signing-key-file={pki.sa_key}",
            "--authorization-mode=Node,RBAC", f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--allow-privileged=true", "--enable-priority-and-fairness=false", "--profiling=false",
            f"--cert-dir={state_dir / 'apiserver-certs'}", "--event-ttl=1h", "--v=1",
            # `kubectl logs` goes through the API server to the node agent's kubelet endpoint.
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
            # The agent keeps nodes Ready; the node lifecycle controller would taint and evict when
            # a busy 2-core machine delays a heartbeat.
            "--controllers=*,-node-lifecycle-controller",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}", "--v=1",
        ],
        "kube-scheduler": [
            str(binaries.kube / "kube-scheduler"), f"--kubeconfig={scheduler_config}",
            f"--authentication-kubeconfig={scheduler_config}", f"--authorization-kubeconfig={scheduler_config}",
            "--bind-address=127.0.0.1", f"--secure-port={ports['scheduler']}",
            f"--cert-dir={state_dir / 'scheduler-certs'}", "--leader-elect=false", "--v=1",
        ],
        "nodeagent": [
            sys.executable, str(REPO_ROOT / "e2e" / "nodeagent.py"),
            f"--server={api_server}", f"--ca={pki.ca_cert}", f"--cert={pki.cert('admin')}",
            f"--key={pki.key('admin')}", f"--state-dir={paths.agent_dir}", f"--pod-logs={paths.pod_logs}",
            f"--nodes={nodes.count}", f"--gpus-per-node={nodes.gpus_per_node}",
            f"--gpu-product={nodes.gpu_product}", f"--node-prefix={nodes.name_prefix}",
            f"--pod-ip-octets={nodes.pod_ip_octets[0]}-{nodes.pod_ip_octets[1]}",
            f"--pod-sd-port={ports['pod_sd']}", f"--kubelet-port={ports['kubelet']}",
            f"--kubelet-cert={pki.cert('kubelet')}", f"--kubelet-key={pki.key('kubelet')}",
            f"--kubelet-version={_kube_version(binaries)}",
        ],
        "prometheus": [
            shutil.which("prometheus") or "/usr/bin/prometheus",
            f"--config.file={state_dir / 'prometheus.yml'}",
            f"--storage.tsdb.path={state_dir / 'prometheus'}", "--storage.tsdb.retention.time=2h",
            f"--web.listen-address=127.0.0.1:{ports['prometheus']}", "--web.enable-lifecycle",
            "--log.level=warn",
        ],
    }


def _kube_version(binaries: Binaries) -> str:
    name = binaries.kube.name  # kubernetes-v1.37.2
    return name.split("-", 1)[1] if "-" in name else "v0.0.0"


def up(paths: ClusterPaths | None = None, nodes: NodePool | None = None, owner: str = "cli",
       say: Callable[[str], None] = print, timeout: float = 120.0) -> ClusterInfo:
    """Starts the cluster, or returns the running one. Idempotent."""
    paths = paths or ClusterPaths.default()
    nodes = nodes or NodePool.from_env()
    nodes.validate()
    paths.state_dir.parent.mkdir(parents=True, exist_ok=True)
    with cluster_lock(paths):
        info = running_info(paths)
        if info is not None:
            say(f"local cluster already running (API server {info.api_server})")
            return info
        if paths.state_dir.exists():
            say("found a stopped or broken local cluster: cleaning it up first")
            _down_locked(paths, say)
        binaries = Binaries.locate()
        if shutil.which("prometheus") is None and not Path("/usr/bin/prometheus").exists():
            raise ClusterError("prometheus is not installed: run `make system-deps` (apt-get install prometheus)")
        started = time.monotonic()
        try:
            info = _start(paths, binaries, nodes, owner, say, timeout)
        except BaseException:
            state = load_state(paths) or {}
            for record in reversed([procs.ProcessRecord.from_dict(r) for r in state.get("processes", [])]):
                procs.stop(record, grace_seconds=5)
            kill_recorded_processes(paths.agent_dir / "processes")
            paths.state_file.unlink(missing_ok=True)
            say(f"cluster start failed; component logs kept in {paths.logs}")
            raise
        say(f"local cluster up in {time.monotonic() - started:.1f}s")
        return info


def _start(paths: ClusterPaths, binaries: Binaries, nodes: NodePool, owner: str,
           say: Callable[[str], None], timeout: float) -> ClusterInfo:
    paths.state_dir.mkdir(parents=True, exist_ok=True)
    paths.logs.mkdir(parents=True, exist_ok=True)
    paths.pod_logs.mkdir(parents=True, exist_ok=True)
    pki = pki_module.create(paths.pki)
    ports = {name: free_port() for name in ("etcd", "etcd_peer", "apiserver", "kcm", "scheduler", "prometheus",
                                            "pod_sd", "kubelet")}
    api_server = f"https://127.0.0.1:{ports['apiserver']}"
    write_kubeconfig(paths.kubeconfig, api_server, pki.ca_cert, pki.cert("admin"), pki.key("admin"), "admin")
    for component in ("kube-controller-manager", "kube-scheduler"):
        write_kubeconfig(paths.state_dir / f"{component}.kubeconfig", api_server, pki.ca_cert, pki.cert(component),
                         pki.key(component), component)
    prometheus_url = f"http://127.0.0.1:{ports['prometheus']}"
    settings = ScrapeSettings(pod_sd_url=f"http://127.0.0.1:{ports['pod_sd']}/targets")
    (paths.state_dir / "prometheus.yml").write_text(yaml.safe_dump(render_config(settings), sort_keys=False))
    state = {
        "api_server": api_server, "prometheus_url": prometheus_url, "ports": ports, "owner": owner,
        "starter_pid": os.getpid(),
        "binaries": {"kube": str(binaries.kube), "etcd": str(binaries.etcd), "helm": str(binaries.helm)},
        "nodes": {"names": nodes.names(), "gpus_per_node": nodes.gpus_per_node, "gpu_product": nodes.gpu_product},
        "processes": [], "complete": False,
    }
    save_state(paths, state)
    commands = _component_commands(paths, binaries, ports, nodes, pki)

    def launch(name: str) -> None:
        env = dict(os.environ)
        record = procs.spawn(name, commands[name], paths.logs / f"{name}.log", env=env, cwd=paths.state_dir)
        state["processes"].append(record.to_dict())
        save_state(paths, state)

    log_of = {name: paths.logs / f"{name}.log" for name in COMPONENT_ORDER}
    launch("etcd")
    wait_until(lambda: _http_ok(f"http://127.0.0.1:{ports['etcd']}/health"), 30, "etcd", [log_of["etcd"]])
    launch("kube-apiserver")
    client = KubeClient(Credentials(api_server, str(pki.ca_cert), str(pki.cert("admin")), str(pki.key("admin"))))
    try:
        wait_until(lambda: _api_ready(client), timeout, "kube-apiserver /readyz", [log_of["kube-apiserver"]])
        say(f"API server ready at {api_server}")
        for name in ("kube-controller-manager", "kube-scheduler", "nodeagent", "prometheus"):
            launch(name)
        wait_until(lambda: _https_ok(f"https://127.0.0.1:{ports['kcm']}/healthz"), 60,
                   "kube-controller-manager /healthz", [log_of["kube-controller-manager"]])
        wait_until(lambda: _https_ok(f"https://127.0.0.1:{ports['scheduler']}/healthz"), 60,
                   "kube-scheduler /healthz", [log_of["kube-scheduler"]])
        wait_until(lambda: _nodes_ready(client, nodes.names()), 60, f"nodes {nodes.names()} Ready",
                   [log_of["nodeagent"]])
        wait_until(lambda: _exists(client, "/api/v1/namespaces/default/serviceaccounts/default"), 60,
                   "the default ServiceAccount (controller-manager)", [log_of["kube-controller-manager"]])
        wait_until(lambda: _http_ok(f"http://127.0.0.1:{ports['pod_sd']}/healthz"), 30,
                   "the node agent's pod discovery endpoint", [log_of["nodeagent"]])
        wait_until(lambda: _http_ok(f"{prometheus_url}/-/ready"), 60, "prometheus /-/ready",
                   [log_of["prometheus"]])
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
    except httpx.HTTPError:
        return False


def _nodes_ready(client: KubeClient, names: list[str]) -> bool:
    for name in names:
        try:
            node = client.get_or_none(f"/api/v1/nodes/{name}")
        except httpx.HTTPError:
            return False
        if node is None:
            return False
        conditions = {c["type"]: c["status"] for c in node.get("status", {}).get("conditions", [])}
        taints = node.get("spec", {}).get("taints") or []
        if conditions.get("Ready") != "True" or any(t["key"].startswith("node.kubernetes.io/not-ready")
                                                   for t in taints):
            return False
    return True


def down(paths: ClusterPaths | None = None, say: Callable[[str], None] = print) -> None:
    """Stops exactly the processes `up` recorded and removes the cluster state."""
    paths = paths or ClusterPaths.default()
    with cluster_lock(paths):
        _down_locked(paths, say)


def _down_locked(paths: ClusterPaths, say: Callable[[str], None]) -> None:
    state = load_state(paths) or {}
    records = {r["name"]: procs.ProcessRecord.from_dict(r) for r in state.get("processes", [])}
    # Reverse start order: the agent stops its pods while the API server still answers.
    for name in reversed(COMPONENT_ORDER):
        record = records.get(name)
        if record is None:
            continue
        if record.alive():
            procs.stop(record, grace_seconds=20 if name == "nodeagent" else 10)
            say(f"stopped {name} (pid {record.pid})")
    leftovers = kill_recorded_processes(paths.agent_dir / "processes")
    if leftovers:
        say(f"stopped {leftovers} pod processes left behind by the node agent")
    if paths.state_dir.exists():
        shutil.rmtree(paths.state_dir)
        say(f"removed {paths.state_dir}")


def join_session(paths: ClusterPaths) -> Path:
    """Marks a test session as a user of the running cluster (see leave_session)."""
    sessions = paths.state_dir / "sessions"
    sessions.mkdir(parents=True, exist_ok=True)
    marker = sessions / str(os.getpid())
    marker.write_text(str(procs.start_time(os.getpid())))
    return marker


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
            try:
                alive = procs.start_time(int(other.name)) == int(other.read_text())
            except ValueError:
                alive = False
            if alive:
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
             f"Prometheus:  {state['prometheus_url']}", f"logs:        {paths.logs}"]
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
        for node in nodes:
            ready = {c["type"]: c["status"] for c in node["status"].get("conditions", [])}.get("Ready")
            gpus = node["status"].get("allocatable", {}).get("nvidia.com/gpu", "0")
            lines.append(f"  node {node['metadata']['name']:<19} Ready={ready} nvidia.com/gpu={gpus}")
        lines.append(f"  pods: {len(pods)}")
    return healthy, lines


def usage(info: ClusterInfo) -> str:
    return "\n".join([
        "",
        "The local cluster is running:",
        f"  export KUBECONFIG={info.kubeconfig}",
        f"  export PATH={info.kubectl.parent}:{info.helm.parent}:$PATH",
        "  kubectl get nodes",
        f"  Prometheus:       {info.prometheus_url}   (also in {info.paths.prometheus_url_file})",
        f"  component logs:   {info.paths.logs}/",
        f"  pod logs:         {info.paths.pod_logs}/<namespace>_<pod>_<container>.log",
        "  stop it with:     make cluster-down",
    ])
