"""Helpers and fixtures for e2e tests of PixtralDeployments on the local cluster: the CRDs, the
locally built images, the operator installed by its chart into the test's namespace, the tiny
Pixtral on a PersistentVolumeClaim, and requests through the router from the host and from pods.
conftest.py makes the fixtures visible to every module."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from localcluster import ApiError, Cluster, wait_for  # noqa: E402
from localcluster.monitoring import SCRAPE_INTERVAL as MANAGED_SCRAPE_INTERVAL  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = ROOT / ".venv" / "bin"
GROUP_PATH = "/apis/serving.pixtral.dev/v1alpha1"
API_KEY = "sk-team-a-0123456789"
OTHER_KEY = "sk-team-b-9876543210"


PIXTRAL_RUNTIME = Path(sys.executable).with_name("pixtral-runtime")


def install_crds(cluster: Cluster) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "manifests" / "crds"))
    for name in ("pixtraldeployments.serving.pixtral.dev",):
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")


def make_tiny_model(directory: Path) -> Path:
    if not (directory / "consolidated.safetensors").exists():
        subprocess.run([str(PIXTRAL_RUNTIME), "tiny-model", str(directory)], check=True, capture_output=True,
                       timeout=120)
    return directory


# Tenant namespaces are locked down as on a real multi-tenant cluster: every pod the operator or a
# test creates there must pass the `restricted` Pod Security Standard.
RESTRICTED_NAMESPACE_LABELS = {"pod-security.kubernetes.io/enforce": "restricted",
                               "pod-security.kubernetes.io/enforce-version": "latest"}


def create_namespace(cluster: Cluster, name: str, labels: Mapping[str, str]) -> str:
    """A namespace with these labels, once its default ServiceAccount exists (pods need it)."""
    cluster.rest.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                               "metadata": {"name": name, "labels": dict(labels)}})
    wait_for(lambda: cluster.rest.get_or_none(f"/api/v1/namespaces/{name}/serviceaccounts/default"), 30,
             f"the default ServiceAccount of namespace {name}")
    return name


def delete_namespace(cluster: Cluster, name: str) -> None:
    """Deletes a namespace and waits until its pods are gone (the kubelet has stopped their
    containers); the namespace object itself lingers a few seconds more, which nothing needs."""
    try:
        cluster.rest.delete(f"/api/v1/namespaces/{name}")
    except ApiError as error:
        if error.status != 404:
            raise
    wait_for(lambda: not cluster.rest.get(f"/api/v1/namespaces/{name}/pods")["items"], 180,
             f"the pods of namespace {name} to be gone (their containers stopped)")


# A PersistentVolume of this class is a host directory holding a model; each test namespace gets
# its own claim, bound by the PV controller through a label selector.
MODEL_STORAGE_CLASS = "pixtral-local-models"
MODEL_CLAIM = "tiny-pixtral-weights"


def split_reference(reference: str) -> tuple[str, str]:
    """'localhost/pixtral-operator:abc' -> ('localhost/pixtral-operator', 'abc')."""
    repository, _, tag = reference.rpartition(":")
    return repository, tag


def create_model_claim(cluster: Cluster, namespace: str, model_dir: Path, claim: str = MODEL_CLAIM) -> str:
    """A PersistentVolume backed by the host directory `model_dir` and a claim in `namespace` that the
    real PV controller binds to it; pods only name the claim, as PSA `restricted` requires."""
    volume = f"{namespace}-{claim}"[:63]
    selector = {"serving.pixtral.dev/model-volume": volume}
    cluster.rest.create("/api/v1/persistentvolumes", {
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": volume, "labels": selector},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadOnlyMany"],
                 "persistentVolumeReclaimPolicy": "Retain", "storageClassName": MODEL_STORAGE_CLASS,
                 "hostPath": {"path": str(model_dir), "type": "Directory"}},
    })
    cluster.rest.create(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims", {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim},
        "spec": {"accessModes": ["ReadOnlyMany"], "storageClassName": MODEL_STORAGE_CLASS,
                 "resources": {"requests": {"storage": "1Gi"}}, "selector": {"matchLabels": selector}},
    })
    wait_for(lambda: (cluster.rest.get(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{claim}")
                      .get("status", {}).get("phase") == "Bound"), 60, f"claim {namespace}/{claim} Bound")
    return claim


def delete_model_volumes(cluster: Cluster, namespace: str) -> None:
    for volume in cluster.rest.get("/api/v1/persistentvolumes")["items"]:
        if volume["metadata"]["name"].startswith(f"{namespace}-"):
            cluster.rest.delete(f"/api/v1/persistentvolumes/{volume['metadata']['name']}")


class InClusterOperator:
    """The chart installed into the test's namespace as a Helm release watching only that namespace:
    the operator runs as a pod of the locally built image under the chart's ServiceAccount and Role,
    so a missing RBAC rule fails the test."""

    RELEASE = "pxop"

    def __init__(self, cluster: Cluster, namespace: str, images: Mapping[str, str],
                 monitoring: str = "annotations"):
        self.cluster = cluster
        self.namespace = namespace
        self.images = images
        # annotations: the host Prometheus scrapes the annotated pods (kubernetes_sd role pod);
        # podmonitor: the Prometheus Operator's Prometheus scrapes them through the rendered PodMonitor.
        self.monitoring = monitoring

    @property
    def selector(self) -> str:
        return f"app.kubernetes.io/instance={self.RELEASE},app.kubernetes.io/name=pixtral-operator"

    def values(self) -> list[str]:
        repository, tag = split_reference(self.images["operator"])
        return [
            "--set", f"watchNamespaces={{{self.namespace}}}",
            "--set", f"image.repository={repository}", "--set", f"image.tag={tag}",
            "--set", f"runtimeImage={self.images['runtime']}", "--set", f"routerImage={self.images['router']}",
            *self.monitoring_values(),
            "--set", "logLevel=DEBUG",
        ]

    def monitoring_values(self) -> list[str]:
        if self.monitoring == "annotations":
            return ["--set", f"prometheusUrl={self.cluster.prometheus_url}"]
        return ["--set", f"prometheusUrl={self.cluster.managed_prometheus_in_cluster_url}",
                "--set", "workloadMonitoring.mode=podmonitor",
                "--set", f"workloadMonitoring.interval={MANAGED_SCRAPE_INTERVAL}"]

    def start(self) -> InClusterOperator:
        self.cluster.helm("upgrade", "--install", self.RELEASE, str(ROOT / "charts" / "pixtral-operator"),
                          "-n", self.namespace, "--skip-crds", *self.values(), "--wait", "--timeout", "3m",
                          timeout=240)
        return self.wait_ready()

    def pods(self) -> list[dict[str, Any]]:
        return pods(self.cluster, self.namespace, self.selector)

    def wait_ready(self, excluding: set[str] = frozenset()) -> InClusterOperator:
        wait_for(lambda: [p for p in ready_pods(self.cluster, self.namespace, self.selector)
                          if p["metadata"]["uid"] not in excluding], 180,
                 f"an operator pod Ready in {self.namespace}")
        return self

    def kill(self) -> set[str]:
        """Deletes the operator pod with no grace period (SIGKILL): nothing gets to finish. Its
        Deployment starts a new one; returns the killed pods' uids."""
        killed = {p["metadata"]["uid"] for p in self.pods()}
        self.cluster.kubectl("delete", "pod", "-n", self.namespace, "-l", self.selector, "--grace-period=0",
                             "--force", "--wait=false")
        return killed

    def restart(self) -> InClusterOperator:
        return self.wait_ready(excluding=self.kill())

    def log(self, tail: int = 200) -> str:
        return self.cluster.kubectl("logs", "-n", self.namespace, "-l", self.selector, f"--tail={tail}",
                                    check=False).stdout

    def stop(self) -> None:
        # PixtralDeployments first, while the operator runs to remove its finalizer: deleting the
        # namespace with the operator already gone leaves them, and the namespace, Terminating.
        deleted = self.cluster.kubectl("delete", "pixtraldeployments", "--all", "-n", self.namespace, "--wait=true",
                                       "--timeout=120s", check=False, timeout=150)
        if deleted.returncode != 0:
            print(f"PixtralDeployments in {self.namespace} not finalized in 120s: {deleted.stderr.strip()}")
        self.cluster.helm("uninstall", self.RELEASE, "-n", self.namespace, "--wait", "--timeout", "2m",
                          check=False, timeout=150)


@pytest.fixture(scope="session")
def crds(cluster: Cluster) -> None:
    install_crds(cluster)


@pytest.fixture(scope="session")
def local_images(cluster: Cluster) -> dict[str, str]:
    """The project's images (operator, router, CPU runtime), built here and imported into the node."""
    return cluster.project_images()


@pytest.fixture(scope="session")
def tiny_model_dir(cluster: Cluster) -> Path:
    return make_tiny_model(cluster.info.paths.volumes / "tiny-pixtral")


@pytest.fixture
def tiny_model(cluster: Cluster, namespace: str, tiny_model_dir: Path) -> Iterator[str]:
    """The tiny Pixtral on a PersistentVolumeClaim in the test's namespace (its name)."""
    claim = create_model_claim(cluster, namespace, tiny_model_dir)
    try:
        yield claim
    finally:
        delete_model_volumes(cluster, namespace)


@contextlib.contextmanager
def running_operator(cluster: Cluster, namespace: str, images: dict[str, str],
                     monitoring: str = "annotations") -> Iterator[InClusterOperator]:
    op = InClusterOperator(cluster, namespace, images, monitoring).start()
    try:
        yield op
    finally:
        print(op.log()[-4000:])
        op.stop()


@pytest.fixture
def operator(cluster: Cluster, crds: None, namespace: str, local_images: dict[str, str]) -> Iterator[InClusterOperator]:
    with running_operator(cluster, namespace, local_images) as op:
        yield op


@pytest.fixture
def podmonitor_operator(cluster: Cluster, crds: None, namespace: str,
                        local_images: dict[str, str]) -> Iterator[InClusterOperator]:
    """The operator rendering PodMonitors, its autoscaler querying the Prometheus Operator's Prometheus."""
    with running_operator(cluster, namespace, local_images, "podmonitor") as op:
        yield op


def tiny_spec(claim: str, **overrides: Any) -> dict[str, Any]:
    """A PixtralDeployment spec that the local cluster runs with real vLLM (CPU build), its model
    on the PersistentVolumeClaim `claim`."""
    spec: dict[str, Any] = {
        "replicas": 1,
        "model": {"servedModelName": "tiny-pixtral", "source": {"pvc": {"claimName": claim}}},
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
        # A request, not a limit (the operator sets none): three engines, a router and the operator fit 2 cores.
        "resources": {"cpu": "250m", "memory": "4Gi"},
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
    """A ready router pod's address (the host reaches pod IPs over the node's bridge); tenants in
    pods use the Service instead (see client_pod_request)."""
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


CLIENT_SCRIPT = """
import json, os, time, httpx
started = time.monotonic()
response = httpx.post(os.environ["URL"], content=os.environ["BODY"], timeout=float(os.environ["TIMEOUT"]),
                      headers={"content-type": "application/json", "authorization": "Bearer " + os.environ["KEY"]})
print("RESULT " + json.dumps({"status": response.status_code, "body": response.text,
                              "headers": dict(response.headers), "elapsed_ms": (time.monotonic() - started) * 1000}))
"""


def run_script_pod(cluster: Cluster, namespace: str, image: str, name: str, script: str,
                   env: Mapping[str, str], timeout: float, labels: Mapping[str, str] | None = None) -> str:
    """Runs a Python script in a pod that PSA `restricted` admits (replacing an earlier pod of that
    name) until it finishes; returns its log."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": dict(labels or {})}, "spec": {
        "restartPolicy": "Never", "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": "main", "image": image, "command": ["python3", "-c", script],
            "env": [{"name": k, "value": v} for k, v in env.items()],
            "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                "readOnlyRootFilesystem": True},
        }]}}
    path = f"/api/v1/namespaces/{namespace}/pods"
    if cluster.rest.get_or_none(f"{path}/{name}") is not None:
        cluster.rest.delete(f"{path}/{name}", {"gracePeriodSeconds": 0})
        wait_gone(cluster, f"{path}/{name}", 60, f"the previous pod {name}")
    cluster.rest.create(path, pod)
    wait_for(lambda: (cluster.rest.get(f"{path}/{name}").get("status", {}).get("phase")
                      in ("Succeeded", "Failed")), timeout, f"pod {name} to finish")
    return cluster.pod_log(namespace, name, "main")


def client_pod_request(cluster: Cluster, namespace: str, image: str, url: str, body: Mapping[str, Any], key: str,
                       pod_name: str = "client", timeout: float = 180) -> dict[str, Any]:
    """POSTs a chat request from a pod in `namespace` (a tenant's client, as PSA `restricted` admits
    it) to `url` + /chat/completions, e.g. status.endpoint; returns status, body, headers, elapsed_ms."""
    env = {"URL": url.rstrip("/") + "/chat/completions", "BODY": json.dumps(body), "KEY": key,
           "TIMEOUT": str(timeout - 10)}
    log = run_script_pod(cluster, namespace, image, pod_name, CLIENT_SCRIPT, env, timeout)
    lines = [line for line in log.splitlines() if line.startswith("RESULT ")]
    assert lines, f"client pod {pod_name} printed no result:\n{log[-3000:]}"
    return json.loads(lines[-1].removeprefix("RESULT "))


# Tries for DURATION seconds: the NetworkPolicy enforcer admits a new pod's address a moment after
# the pod starts, so one early refusal proves nothing either way.
PROBE_SCRIPT = """
import os, socket, time
deadline = time.monotonic() + float(os.environ["DURATION"])
outcome = "closed"
while time.monotonic() < deadline:
    try:
        socket.create_connection((os.environ["HOST"], int(os.environ["PORT"])), timeout=3).close()
        outcome = "open"
        break
    except OSError as error:
        outcome = f"closed {type(error).__name__} {error}"
        time.sleep(1)
print("PROBE " + outcome)
"""


def tcp_probe_from_pod(cluster: Cluster, namespace: str, image: str, host: str, port: int, pod_name: str,
                       labels: Mapping[str, str] | None = None, duration: float = 20) -> bool:
    """Whether a pod (with `labels`, in `namespace`) opens a TCP connection to host:port within
    `duration` seconds of trying."""
    env = {"HOST": host, "PORT": str(port), "DURATION": str(duration)}
    try:
        log = run_script_pod(cluster, namespace, image, pod_name, PROBE_SCRIPT, env, 120 + duration, labels)
    finally:
        with contextlib.suppress(ApiError):
            cluster.rest.delete(f"/api/v1/namespaces/{namespace}/pods/{pod_name}", {"gracePeriodSeconds": 0})
    assert "PROBE " in log, log
    return "PROBE open" in log


# Posts until DURATION seconds have passed or an HTTP answer came: like PROBE_SCRIPT, the
# NetworkPolicy enforcer admits a new pod's address a moment after the pod starts.
POST_SCRIPT = """
import json, os, time, httpx
deadline = time.monotonic() + float(os.environ["DURATION"])
headers = json.loads(os.environ["HEADERS"])
result = {"error": "no attempt"}
while time.monotonic() < deadline:
    try:
        r = httpx.post(os.environ["URL"], content=os.environ["BODY"], headers=headers, timeout=10)
        result = {"status": r.status_code, "body": r.text}
        break
    except httpx.HTTPError as error:
        result = {"error": f"{type(error).__name__} {error}"}
        time.sleep(1)
print("RESULT " + json.dumps(result))
"""


def post_from_pod(cluster: Cluster, namespace: str, image: str, url: str, body: Mapping[str, Any], pod_name: str,
                  headers: Mapping[str, str] | None = None, labels: Mapping[str, str] | None = None,
                  duration: float = 30) -> dict[str, Any]:
    """POSTs `body` to `url` from a pod (with `labels`) with only `headers` besides the content type;
    returns {"status", "body"} of the first answer, or {"error"} when none came within `duration`."""
    env = {"URL": url, "BODY": json.dumps(body), "DURATION": str(duration),
           "HEADERS": json.dumps({"content-type": "application/json", **(headers or {})})}
    try:
        log = run_script_pod(cluster, namespace, image, pod_name, POST_SCRIPT, env, 120 + duration, labels)
    finally:
        with contextlib.suppress(ApiError):
            cluster.rest.delete(f"/api/v1/namespaces/{namespace}/pods/{pod_name}", {"gracePeriodSeconds": 0})
    lines = [line for line in log.splitlines() if line.startswith("RESULT ")]
    assert lines, f"pod {pod_name} printed no result:\n{log[-3000:]}"
    return json.loads(lines[-1].removeprefix("RESULT "))


def pod_sandboxes(cluster: Cluster, namespace: str, deployment: str) -> list[dict[str, Any]]:
    """The node's pod sandboxes of a PixtralDeployment, as containerd knows them (not the API's
    view): proof that deletion left no container behind."""
    return cluster.sandboxes(namespace, {"serving.pixtral.dev/deployment": deployment})


def wait_gone(cluster: Cluster, path: str, timeout: float, what: str) -> None:
    wait_for(lambda: cluster.rest.get_or_none(path) is None, timeout, what)


def now() -> float:
    return time.monotonic()
