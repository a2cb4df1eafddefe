"""`pixtral-runtime serve` and `pixtral-runtime router` as pods on the local cluster's node, for the
engine tests: each runs from the locally built image in a namespace enforcing PSA `restricted`,
with the tiny Pixtral on a claim, and is reached at its pod IP from the host (over the node's bridge).
Signals go in through `kubectl exec` (the container's PID 1 is the program), and the container's
exit code and log come back through the pod's status and `kubectl logs`."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from localcluster import ApiError, Cluster, wait_for
from pixtral_e2e import (
    RESTRICTED_NAMESPACE_LABELS,
    create_model_claim,
    create_namespace,
    delete_model_volumes,
    delete_namespace,
)
from pixtral_operator.render.labels import ROUTER_HTTP_PORT, RUNTIME_HEALTH_PORT, RUNTIME_HTTP_PORT

MODEL_MOUNT = "/models/tiny-pixtral"
# Generous: on a busy 2-core machine two vLLM engines starting side by side can take minutes.
START_TIMEOUT_SECONDS = 600


@contextlib.contextmanager
def engine_namespace(cluster: Cluster, prefix: str, model_dir: Any) -> Iterator[str]:
    """A restricted namespace for a test module, with the tiny Pixtral's claim; removed afterwards."""
    name = create_namespace(cluster, f"{prefix}-{uuid.uuid4().hex[:6]}", RESTRICTED_NAMESPACE_LABELS)
    try:
        create_model_claim(cluster, name, model_dir)
        yield name
    finally:
        delete_namespace(cluster, name)
        delete_model_volumes(cluster, name)


def _restricted_container(container: dict[str, Any]) -> dict[str, Any]:
    return {**container, "securityContext": {
        "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "readOnlyRootFilesystem": True}}


def _pod(name: str, container: dict[str, Any], volumes: list[dict], grace: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}}, "spec": {
        "restartPolicy": "Never", "automountServiceAccountToken": False, "terminationGracePeriodSeconds": grace,
        "enableServiceLinks": False,
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [_restricted_container(container)], "volumes": volumes}}


def runtime_pod(name: str, image: str, claim: str, env: Mapping[str, str]) -> dict[str, Any]:
    """`pixtral-runtime serve` of the tiny Pixtral; `env` adds or overrides PIXTRAL_*/VLLM_* settings."""
    settings = {
        "HOME": "/cache", "TMPDIR": "/tmp", "HF_HUB_OFFLINE": "1",
        "VLLM_CACHE_ROOT": "/cache/vllm", "TORCHINDUCTOR_CACHE_DIR": "/cache/inductor",
        "PIXTRAL_MODEL": MODEL_MOUNT, "PIXTRAL_SERVED_MODEL_NAME": "tiny-pixtral", "PIXTRAL_MAX_MODEL_LEN": "4096",
        "PIXTRAL_VLLM_PORT": str(RUNTIME_HTTP_PORT), "PIXTRAL_HEALTH_PORT": str(RUNTIME_HEALTH_PORT),
        **env,
    }
    container = {
        "name": "runtime", "image": image, "command": ["pixtral-runtime", "serve"],
        "env": [{"name": "PIXTRAL_HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]
        + [{"name": k, "value": v} for k, v in settings.items()],
        "ports": [{"name": "http", "containerPort": RUNTIME_HTTP_PORT}, {"name": "health", "containerPort": RUNTIME_HEALTH_PORT}],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "health"}, "periodSeconds": 2},
        "resources": {"requests": {"cpu": "250m", "memory": "2Gi"}, "limits": {"memory": "6Gi"}},
        "volumeMounts": [{"name": "model", "mountPath": MODEL_MOUNT, "readOnly": True},
                         {"name": "cache", "mountPath": "/cache"}, {"name": "tmp", "mountPath": "/tmp"},
                         {"name": "dshm", "mountPath": "/dev/shm"}],
    }
    volumes = [{"name": "model", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}},
               {"name": "cache", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}},
               {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}}]
    return _pod(name, container, volumes, grace=300)


def router_pod(name: str, image: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """`pixtral-runtime router --config` with a static configuration from a ConfigMap of the same name."""
    container = {
        "name": "router", "image": image, "command": ["pixtral-runtime", "router", "--config", "/etc/router/router.json",
                                                      "--host", "0.0.0.0", "--port", str(ROUTER_HTTP_PORT),
                                                      "--debug-headers"],
        "ports": [{"name": "http", "containerPort": ROUTER_HTTP_PORT}],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 1},
        "volumeMounts": [{"name": "config", "mountPath": "/etc/router", "readOnly": True},
                         {"name": "tmp", "mountPath": "/tmp"}],
    }
    volumes = [{"name": "config", "configMap": {"name": name}}, {"name": "tmp", "emptyDir": {}}]
    pod = _pod(name, container, volumes, grace=10)
    pod["data"] = {"router.json": json.dumps(dict(config))}  # taken out by PodProcess.start
    return pod


# Sends a signal to a process of the container: PID 1 (the program) or its first child (vLLM).
SIGNAL_SCRIPT = """
import os, signal, sys
pid = int(sys.argv[2])
if sys.argv[3] == "child":
    pid = int(open(f"/proc/{pid}/task/{pid}/children").read().split()[0])
os.kill(pid, getattr(signal, sys.argv[1]))
print(pid)
"""


@dataclass
class PodProcess:
    """One program in a pod, reached at the pod's IP."""

    cluster: Cluster
    namespace: str
    name: str
    port: int
    health_port: int | None = None

    @classmethod
    def start(cls, cluster: Cluster, namespace: str, manifest: dict[str, Any], port: int,
              health_port: int | None = None) -> PodProcess:
        manifest = dict(manifest)
        data = manifest.pop("data", None)
        name = manifest["metadata"]["name"]
        if data is not None:
            cluster.rest.create(f"/api/v1/namespaces/{namespace}/configmaps",
                                {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data})
        cluster.rest.create(f"/api/v1/namespaces/{namespace}/pods", manifest)
        return cls(cluster, namespace, name, port, health_port)

    @property
    def pod(self) -> dict[str, Any]:
        return self.cluster.rest.get(f"/api/v1/namespaces/{self.namespace}/pods/{self.name}")

    @property
    def ip(self) -> str:
        return self.pod["status"]["podIP"]

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.port}"

    @property
    def health_url(self) -> str:
        return f"http://{self.ip}:{self.health_port}"

    def state(self) -> dict[str, Any]:
        """The container's state: {"running": ...}, {"terminated": {"exitCode": ...}} or {"waiting": ...}."""
        statuses = self.pod["status"].get("containerStatuses") or [{}]
        return statuses[0].get("state") or {}

    def running(self) -> bool:
        return "running" in self.state()

    def log(self) -> str:
        return self.cluster.kubectl("logs", "-n", self.namespace, self.name, check=False).stdout

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def wait_ready(self, timeout: float = START_TIMEOUT_SECONDS) -> PodProcess:
        def ready() -> bool:
            pod = self.pod
            if "terminated" in self.state():
                raise AssertionError(f"{self.name} exited: {self.state()}\n{self.log_tail()}")
            return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))
        try:
            wait_for(ready, timeout, f"pod {self.namespace}/{self.name} Ready")
        except AssertionError:
            raise
        except Exception as error:
            raise AssertionError(f"{error}\n{self.log_tail()}") from error
        return self

    def signal(self, name: str, target: str = "main") -> int:
        """Sends signal `name` (e.g. "SIGTERM") to the program (target "main", which must handle it:
        it is its PID namespace's init) or to its first child ("child": vLLM under the supervisor);
        returns the PID inside the container."""
        result = self.cluster.kubectl("exec", "-n", self.namespace, self.name, "--", "python3", "-c", SIGNAL_SCRIPT,
                                      name, "1", "child" if target == "child" else "main")
        return int(result.stdout.strip())

    def kill(self) -> int:
        """SIGKILL to the program from the node: a PID namespace's init cannot be sent SIGKILL from
        inside it, so `signal("SIGKILL")` would be ignored. Returns the PID on the node."""
        container_id = self.pod["status"]["containerStatuses"][0]["containerID"].split("://", 1)[1]
        info = json.loads(self.cluster.crictl("inspect", container_id).stdout)["info"]
        os.kill(int(info["pid"]), signal.SIGKILL)
        return int(info["pid"])

    def wait_exit(self, timeout: float) -> int:
        """The container's exit code once it has stopped."""
        terminated = wait_for(lambda: self.state().get("terminated"), timeout, f"{self.name} to exit")
        return int(terminated["exitCode"])

    def delete(self, grace: int | None = None) -> None:
        body = {"gracePeriodSeconds": grace} if grace is not None else None
        with contextlib.suppress(ApiError):
            self.cluster.rest.delete(f"/api/v1/namespaces/{self.namespace}/pods/{self.name}", body)

    def reachable(self) -> bool:
        try:
            httpx.get(self.url + "/health", timeout=2)
        except httpx.ConnectError:
            return False
        except httpx.HTTPError:
            return True
        return True
