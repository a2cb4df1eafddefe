"""Helpers and fixtures for e2e tests of PixtralDeployments on the local cluster: the CRDs, an
operator process scoped to the test's namespace, the tiny Pixtral on disk, and requests through
the router. Test modules import the fixtures they use from here."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from localcluster import Cluster, wait_for  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = ROOT / ".venv" / "bin"
GROUP_PATH = "/apis/serving.pixtral.dev/v1alpha1"
API_KEY = "sk-team-a-0123456789"
OTHER_KEY = "sk-team-b-9876543210"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PIXTRAL_RUNTIME = Path(sys.executable).with_name("pixtral-runtime")
# Generous: on a busy 2-core machine two vLLM engines starting side by side can take minutes.
RUNTIME_START_TIMEOUT_SECONDS = 600


@dataclass
class LocalProcess:
    """A `pixtral-runtime` process on 127.0.0.1 without a cluster (serve or router), stopped by PID.

    `url` is what clients call (vLLM's port for `serve`, the router's port for `router`);
    `health_url` is the supervisor's health server for `serve`.
    """

    process: subprocess.Popen
    log_path: Path
    url: str
    health_url: str = ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def child_pids(self) -> list[int]:
        with contextlib.suppress(OSError):
            return [int(p) for p in Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()]
        return []

    def wait_ready(self, url: str, timeout: float = RUNTIME_START_TIMEOUT_SECONDS) -> None:
        """Until `url` answers 200; fails with the log's tail if the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"{self.log_path.name}: exited with {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            time.sleep(1)
        pytest.fail(f"{url} not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """The process, then the process groups of its children (vLLM) if they outlive it."""
        children = self.child_pids()
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        for pid in children:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


def start_local_process(args: list[str], log_path: Path, url: str, health_url: str = "",
                        env: Mapping[str, str] | None = None) -> LocalProcess:
    with open(log_path, "wb") as log:
        process = subprocess.Popen([str(PIXTRAL_RUNTIME), *args], env=dict(env) if env is not None else None,
                                   stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    return LocalProcess(process, log_path, url, health_url)


def start_local_runtime(tmp: Path, model: Path, name: str, env: Mapping[str, str]) -> LocalProcess:
    """`pixtral-runtime serve` of the tiny Pixtral on free 127.0.0.1 ports; `env` adds or overrides settings."""
    vllm_port, health_port = free_port(), free_port()
    base = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "VLLM_CACHE_ROOT": str(tmp / "cache" / "vllm"),
        "TORCHINDUCTOR_CACHE_DIR": str(tmp / "cache" / "inductor"),
        "PIXTRAL_MODEL": str(model),
        "PIXTRAL_SERVED_MODEL_NAME": "tiny-pixtral",
        "PIXTRAL_MAX_MODEL_LEN": "4096",
        "PIXTRAL_HOST": "127.0.0.1",
        "PIXTRAL_VLLM_PORT": str(vllm_port),
        "PIXTRAL_HEALTH_PORT": str(health_port),
    }
    base.pop("VLLM_CPU_KVCACHE_SPACE", None)
    return start_local_process(["serve"], tmp / f"runtime-{name}.log", f"http://127.0.0.1:{vllm_port}",
                               f"http://127.0.0.1:{health_port}", {**base, **env})


def install_crds(cluster: Cluster) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "manifests" / "crds"))
    for name in ("pixtraldeployments.serving.pixtral.dev",):
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")


def make_tiny_model(directory: Path) -> Path:
    if not (directory / "consolidated.safetensors").exists():
        subprocess.run([str(PIXTRAL_RUNTIME), "tiny-model", str(directory)], check=True, capture_output=True,
                       timeout=120)
    return directory


class OperatorProcess:
    """`pixtral-operator` as a local process with the admin kubeconfig, watching chosen namespaces."""

    def __init__(self, cluster: Cluster, namespaces: list[str], log_path: Path):
        self.cluster = cluster
        self.namespaces = namespaces
        self.log_path = log_path
        self.health_port = free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> OperatorProcess:
        env = dict(os.environ)
        env.update(
            KUBECONFIG=str(self.cluster.kubeconfig),
            PIXTRAL_PROMETHEUS_URL=self.cluster.prometheus_url,
            POD_IP="127.0.0.1",
            PIXTRAL_HEALTH_PORT=str(self.health_port),
            PIXTRAL_METRICS_PORT=str(free_port()),
            PIXTRAL_RESYNC_SECONDS="2",
            PIXTRAL_AUTOSCALE_SECONDS="2",
        )
        args = [str(VENV_BIN / "pixtral-operator")]
        for ns in self.namespaces:
            args += ["--namespace", ns]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        wait_for(self._healthy, 60, f"pixtral-operator /healthz on 127.0.0.1:{self.health_port} (log: {self.log_path})")
        return self

    def _healthy(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"pixtral-operator exited early; log:\n{self.log_path.read_text()[-3000:]}")
        try:
            return httpx.get(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        """SIGKILL: no chance to finish anything (the restart test)."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


@pytest.fixture(scope="session")
def crds(cluster: Cluster) -> None:
    install_crds(cluster)


@pytest.fixture(scope="session")
def tiny_model(cluster: Cluster) -> Path:
    return make_tiny_model(cluster.kubeconfig.parent / "models" / "tiny-pixtral")


@pytest.fixture
def operator(cluster: Cluster, crds: None, namespace: str) -> Iterator[OperatorProcess]:
    op = OperatorProcess(cluster, [namespace], cluster.kubeconfig.parent / "logs" / f"operator-{namespace}.log").start()
    try:
        yield op
    finally:
        op.stop()


def tiny_spec(model_dir: Path, **overrides: Any) -> dict[str, Any]:
    """A PixtralDeployment spec that the local cluster runs with real vLLM (CPU build)."""
    spec: dict[str, Any] = {
        "replicas": 1,
        "model": {"servedModelName": "tiny-pixtral", "source": {"hostPath": {"path": str(model_dir)}}},
        "engine": {
            "maxModelLen": 4096,
            "imagesPerPrompt": 2,
            "maxNumSeqs": 8,
            "extraArgs": ["--dtype", "bfloat16", "--enforce-eager"],
            # nobind: vLLM's automatic binding pins every engine to core 0, so a busy engine starves
            # a starting one when two run on this machine.
            "env": [
                {"name": "VLLM_CPU_KVCACHE_SPACE", "value": "1"},
                {"name": "HF_HUB_OFFLINE", "value": "1"},
                {"name": "VLLM_CPU_OMP_THREADS_BIND", "value": "nobind"},
            ],
        },
        "resources": {"cpu": "1", "memory": "4Gi"},
        "router": {"requestTimeoutSeconds": 120},
    }
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(spec.get(key), Mapping):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return spec


def pxd_manifest(name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "serving.pixtral.dev/v1alpha1", "kind": "PixtralDeployment", "metadata": {"name": name}, "spec": dict(spec)}


def apply(cluster: Cluster, namespace: str, manifest: Mapping[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(dict(manifest)))


def get_pxd(cluster: Cluster, namespace: str, name: str) -> dict[str, Any] | None:
    return cluster.rest.get_or_none(f"{GROUP_PATH}/namespaces/{namespace}/pixtraldeployments/{name}")


def condition(obj: Mapping[str, Any] | None, type_: str) -> Mapping[str, Any] | None:
    for c in ((obj or {}).get("status") or {}).get("conditions") or ():
        if c.get("type") == type_:
            return c
    return None


def wait_condition(cluster: Cluster, namespace: str, name: str, type_: str, status: str, timeout: float,
                   reason: str | None = None) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = get_pxd(cluster, namespace, name)
        c = condition(obj, type_)
        if c and c.get("status") == status and (reason is None or c.get("reason") == reason) and \
                c.get("observedGeneration") == obj["metadata"]["generation"]:
            return obj
        return None

    return wait_for(check, timeout, f"PixtralDeployment {namespace}/{name} {type_}={status}"
                    + (f" ({reason})" if reason else ""))


def pods(cluster: Cluster, namespace: str, selector: str) -> list[dict[str, Any]]:
    return cluster.rest.get(f"/api/v1/namespaces/{namespace}/pods", labelSelector=selector)["items"]


def ready_pods(cluster: Cluster, namespace: str, selector: str) -> list[dict[str, Any]]:
    out = []
    for pod in pods(cluster, namespace, selector):
        if pod["metadata"].get("deletionTimestamp"):
            continue
        conds = {c["type"]: c["status"] for c in (pod.get("status") or {}).get("conditions") or ()}
        if conds.get("Ready") == "True":
            out.append(pod)
    return out


def router_url(cluster: Cluster, namespace: str, name: str, timeout: float = 120) -> str:
    """The router pod's address: the local cluster has no kube-proxy, so clients use pod IPs."""
    selector = f"serving.pixtral.dev/deployment={name},app.kubernetes.io/component=router"
    ready = wait_for(lambda: ready_pods(cluster, namespace, selector), timeout, f"a ready router pod of {name}")
    return f"http://{ready[0]['status']['podIP']}:8080"


def png_data_url(width: int = 64, height: int = 48, color: tuple[int, int, int] = (200, 40, 40)) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def chat_body(images: int = 0, text: str = "Describe the picture.", max_tokens: int = 4, model: str = "tiny-pixtral",
              **extra: Any) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "text", "text": text}]
    content += [{"type": "image_url", "image_url": {"url": png_data_url(color=(i * 60 % 255, 90, 160))}} for i in range(images)]
    return {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, **extra}


def chat(url: str, body: Mapping[str, Any], key: str | None = API_KEY, headers: Mapping[str, str] | None = None,
         timeout: float = 120) -> httpx.Response:
    h = {"content-type": "application/json", **(headers or {})}
    if key:
        h["authorization"] = f"Bearer {key}"
    return httpx.post(f"{url}/v1/chat/completions", content=json.dumps(body), headers=h, timeout=timeout)


def create_api_keys(cluster: Cluster, namespace: str, name: str = "api-keys") -> str:
    cluster.kubectl("create", "secret", "generic", name, "-n", namespace,
                    f"--from-literal=team-a={API_KEY}", f"--from-literal=team-b={OTHER_KEY}")
    return name


def processes_with_env(marker: str) -> list[int]:
    """PIDs of local processes whose environment contains `marker` (pods of one namespace carry
    their namespace in their env), to prove that deletion leaves no process behind."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker.encode() in (proc / "environ").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def wait_gone(cluster: Cluster, path: str, timeout: float, what: str) -> None:
    wait_for(lambda: cluster.rest.get_or_none(path) is None, timeout, what)


def now() -> float:
    return time.monotonic()
