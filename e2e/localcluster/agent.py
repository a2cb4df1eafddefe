"""The local process agent: simulated GPU nodes whose pods run as local processes.

It plays the kubelet's part for the nodes it registers: it watches pods bound to them, runs each
container as a process group with its own 127.0.x.y pod IP, probes it, reports container status
and pod conditions, restarts per restartPolicy, and on deletion sends SIGTERM, then SIGKILL after
the grace period, then removes the pod object.

Path mapping: a process cannot see container paths, so each container gets a directory that
stands for its root (PIXTRAL_CONTAINER_ROOT); every volume mount appears there as a symlink at
<root><mountPath>, and mount paths inside command, args, env values, workingDir and exec probes
are rewritten to those local paths. Pods with a service-account token also get KUBECONFIG
pointing at a kubeconfig with that token (the kubernetes client and kopf both read it).
"""

from __future__ import annotations

import base64
import concurrent.futures
import datetime as dt
import http.server
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from . import podsd, podspec, procs
from .kube import ApiError, Credentials, KubeClient
from .podspec import NodeSpec, PathMapping, Probe, SpecError

log = logging.getLogger("nodeagent")

PASSED_THROUGH_ENV = ("HOME", "LANG", "LC_ALL", "TZ", "USER", "LOGNAME", "TMPDIR")
TOKEN_SECONDS = 3607  # what the kubelet asks for; the API server extends such tokens
STOP_REASONS_FOR_EVENTS = 30.0


def rfc3339(when: float | None = None) -> str:
    moment = dt.datetime.fromtimestamp(when if when is not None else time.time(), dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_time(when: float | None = None) -> str:
    moment = dt.datetime.fromtimestamp(when if when is not None else time.time(), dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class AgentConfig:
    nodes: tuple[NodeSpec, ...]
    api_server: str                 # given to pods (KUBERNETES_SERVICE_HOST/PORT, kubeconfig)
    ca_file: Path
    state_dir: Path                 # per-pod directories and process records
    pod_logs: Path                  # <ns>_<pod>_<container>.log
    path_prefix: str                # put first on every process' PATH (the project's venv bin)
    runnable_images: str = podspec.DEFAULT_RUNNABLE_IMAGES
    kubelet_version: str = "v1.37.2"
    restart_backoff_base: float = 1.0
    restart_backoff_cap: float = 30.0
    heartbeat_seconds: float = 10.0
    ip_octet_range: tuple[int, int] = (10, 199)   # pod IPs 127.0.<x>.<2..254>
    pod_sd_port: int | None = None  # serve Prometheus http_sd pod discovery on 127.0.0.1:<port>
    # The kubelet endpoint for `kubectl logs` (HTTPS, clients must present a certificate of ca_file).
    kubelet_port: int = 0
    kubelet_cert: Path | None = None
    kubelet_key: Path | None = None

    @property
    def pods_dir(self) -> Path:
        return self.state_dir / "pods"

    @property
    def records_dir(self) -> Path:
        return self.state_dir / "processes"


class IpAllocator:
    """Unique pod IPs in 127.0.x.y; freed addresses go to the back of the line."""

    def __init__(self, octets: tuple[int, int]):
        self._free = [f"127.0.{x}.{y}" for x in range(octets[0], octets[1] + 1) for y in range(2, 255)]
        self._used: set[str] = set()
        self._lock = threading.Lock()

    def allocate(self, preferred: str | None = None) -> str:
        with self._lock:
            if preferred and preferred in self._free:
                self._free.remove(preferred)
                self._used.add(preferred)
                return preferred
            if not self._free:
                raise RuntimeError("no free pod IPs left")
            address = self._free.pop(0)
            self._used.add(address)
            return address

    def release(self, address: str) -> None:
        with self._lock:
            if address in self._used:
                self._used.discard(address)
                self._free.append(address)


class ApiWriter:
    """Sends pod status patches and events from one thread so the sync loop never waits on the API.

    Only the latest status of each pod is kept; failed writes are retried.
    """

    def __init__(self, kube: KubeClient, stop: threading.Event):
        self._kube = kube
        self._stop = stop
        self._statuses: dict[str, tuple[str, str, dict]] = {}
        self._events: list[dict] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="api-writer", daemon=True)
        self._thread.start()

    def status(self, pod_key: tuple[str, str, str], body: dict) -> None:
        namespace, name, uid = pod_key
        with self._lock:
            self._statuses[uid] = (namespace, name, body)
        self._wake.set()

    def event(self, event: dict) -> None:
        with self._lock:
            if len(self._events) < 1000:
                self._events.append(event)
        self._wake.set()

    def pending(self, uid: str) -> bool:
        with self._lock:
            return uid in self._statuses

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            with self._lock:
                statuses, self._statuses = self._statuses, {}
                events, self._events = self._events, []
            for uid, (namespace, name, body) in statuses.items():
                try:
                    self._kube.strategic_patch(f"/api/v1/namespaces/{namespace}/pods/{name}/status", body)
                except ApiError as error:
                    if error.status in (404, 409, 422):
                        if error.status == 422:
                            log.warning("status of %s/%s rejected: %s", namespace, name, error)
                        continue
                    self._retry(uid, namespace, name, body, error)
                except httpx.HTTPError as error:
                    self._retry(uid, namespace, name, body, error)
            for event in events:
                try:
                    self._kube.create(f"/api/v1/namespaces/{event['metadata']['namespace']}/events", event)
                except (ApiError, httpx.HTTPError) as error:
                    log.debug("event not recorded: %s", error)

    def _retry(self, uid: str, namespace: str, name: str, body: dict, error: Exception) -> None:
        log.warning("status of %s/%s not written (%s); retrying", namespace, name, error)
        with self._lock:
            self._statuses.setdefault(uid, (namespace, name, body))
        time.sleep(1.0)


class ProbeRunner:
    """One probe of one container: schedules runs on the pool, counts results against thresholds."""

    def __init__(self, kind: str, probe: Probe, check: Callable[[], tuple[bool, str]]):
        self.kind = kind          # startup | readiness | liveness
        self.probe = probe
        self._check = check
        self.future: concurrent.futures.Future | None = None
        self.successes = 0
        self.failures = 0
        self.passing = kind == "liveness"
        self.next_due = 0.0
        self.last_message = ""

    def reset(self, now: float) -> None:
        self.future = None
        self.successes = self.failures = 0
        self.passing = self.kind == "liveness"
        self.next_due = now + self.probe.initial_delay

    def tick(self, now: float, pool: concurrent.futures.Executor) -> str | None:
        """Returns "failed" when the failure threshold was just reached, "passed" on success threshold."""
        transition = None
        if self.future is not None and self.future.done():
            try:
                ok, message = self.future.result()
            except Exception as error:  # noqa: BLE001 - a probe crash is a probe failure
                ok, message = False, str(error)
            self.future = None
            if ok:
                self.successes += 1
                self.failures = 0
                if not self.passing and self.successes >= self.probe.success_threshold:
                    self.passing = True
                    transition = "passed"
            else:
                self.failures += 1
                self.successes = 0
                self.last_message = message
                if self.failures >= self.probe.failure_threshold and (self.passing or self.kind != "readiness"):
                    self.passing = False
                    transition = "failed"
                    self.failures = 0
        if self.future is None and now >= self.next_due:
            self.next_due = now + self.probe.period
            self.future = pool.submit(self._check)
        return transition


class ContainerRuntime:
    def __init__(self, spec: dict, init: bool):
        self.spec = spec
        self.name: str = spec["name"]
        self.init = init
        self.process: subprocess.Popen | None = None
        self.record: procs.ProcessRecord | None = None
        self.state: dict = {"waiting": {"reason": "ContainerCreating"}}
        self.last_state: dict = {}
        self.restart_count = 0
        self.consecutive_failures = 0
        self.next_start_at = 0.0
        self.started_mono = 0.0
        self.started_wall = 0.0
        self.done = False                  # ended for good: no restart coming
        self.exit_code: int | None = None
        self.stop_deadline: float | None = None
        self.stop_reason = ""
        self.probes: dict[str, ProbeRunner] = {}
        self.env: dict[str, str] = {}
        self.cwd = ""
        self.mappings: list[PathMapping] = []

    @property
    def running(self) -> bool:
        return self.process is not None

    @property
    def ready(self) -> bool:
        if not self.running or not self.started:
            return False
        readiness = self.probes.get("readiness")
        return readiness.passing if readiness else True

    @property
    def started(self) -> bool:
        if not self.running:
            return False
        startup = self.probes.get("startup")
        return startup.passing if startup else True

    def status(self, image: str) -> dict:
        status = {"name": self.name, "image": image, "imageID": "", "ready": self.ready,
                  "restartCount": self.restart_count, "started": self.started, "state": self.state}
        if self.record:
            status["containerID"] = f"process://{self.record.pid}"
        if self.last_state:
            status["lastState"] = self.last_state
        return status


class PodRuntime:
    def __init__(self, agent: Agent, pod: dict):
        meta = pod["metadata"]
        self.agent = agent
        self.pod = pod
        self.uid: str = meta["uid"]
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.key = (self.namespace, self.name, self.uid)
        self.root = agent.config.pods_dir / f"{self.namespace}_{self.name}_{self.uid[:8]}"
        preferred = pod.get("status", {}).get("podIP")
        self.ip = agent.ips.allocate(preferred)
        spec = pod["spec"]
        self.init_containers = [ContainerRuntime(c, True) for c in spec.get("initContainers", [])]
        self.containers = [ContainerRuntime(c, False) for c in spec.get("containers", [])]
        self.prepared = False
        self.prepare_error: tuple[str, str] | None = None
        self.next_prepare_at = 0.0
        self.next_refresh_at = 0.0
        self.tokens: dict[tuple[str, str, int], tuple[str, float]] = {}
        self.kubeconfig: Path | None = None
        self.start_wall = time.time()
        self.terminating = False
        self.finalized = False
        self.object_gone = False
        self.condition_times: dict[str, tuple[str, str]] = {}
        self.last_status: dict | None = None
        self.recent_events: dict[tuple[str, str], float] = {}
        phase = pod.get("status", {}).get("phase")
        self.finished = phase in ("Succeeded", "Failed")   # a pod that ended before the agent started

    # --- helpers -------------------------------------------------------------------------------
    @property
    def restart_policy(self) -> str:
        return self.pod["spec"].get("restartPolicy", "Always")

    def all_containers(self) -> list[ContainerRuntime]:
        return self.init_containers + self.containers

    def event(self, kind: str, reason: str, message: str) -> None:
        now = time.monotonic()
        if now - self.recent_events.get((reason, message), -1e9) < STOP_REASONS_FOR_EVENTS:
            return
        self.recent_events[(reason, message)] = now
        log.info("%s/%s %s: %s", self.namespace, self.name, reason, message)
        stamp = rfc3339()
        self.agent.writer.event({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{self.name}.", "namespace": self.namespace},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "namespace": self.namespace, "name": self.name,
                               "uid": self.uid},
            "reason": reason, "message": message, "type": kind,
            "source": {"component": "kubelet", "host": self.pod["spec"].get("nodeName", "")},
            "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
        })

    def configmap(self, name: str) -> dict | None:
        return self.agent.lookup("ConfigMap", self.namespace, name)

    def secret(self, name: str) -> dict | None:
        return self.agent.lookup("Secret", self.namespace, name)

    def container_root(self, container: ContainerRuntime) -> Path:
        return self.root / "rootfs" / container.name

    # --- volumes --------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Materialises volumes and per-container roots; raises SpecError with a clear message."""
        volumes_dir = self.root / "volumes"
        volumes_dir.mkdir(parents=True, exist_ok=True)
        volumes = {v["name"]: v for v in self.pod["spec"].get("volumes", [])}
        for volume in volumes.values():
            self.materialize(volume, volumes_dir / volume["name"])
        for container in self.all_containers():
            croot = self.container_root(container)
            croot.mkdir(parents=True, exist_ok=True)
            for mount in container.spec.get("volumeMounts", []):
                if mount["name"] not in volumes:
                    raise SpecError("CreateContainerConfigError", f"volumeMount {mount['name']!r} has no volume")
                source = volumes_dir / mount["name"]
                if mount.get("subPath"):
                    source = source / mount["subPath"]
                    if not source.exists():
                        source.mkdir(parents=True, exist_ok=True)
                target = Path(str(croot) + mount["mountPath"].rstrip("/"))
                target.parent.mkdir(parents=True, exist_ok=True)
                if target.is_symlink() or target.exists():
                    if target.is_symlink() and os.readlink(target) == str(source):
                        continue
                    if target.is_dir() and not target.is_symlink():
                        shutil.rmtree(target)
                    else:
                        target.unlink()
                target.symlink_to(source)
        self.write_kubeconfig()
        self.prepared = True

    def materialize(self, volume: dict, target: Path) -> None:
        if "emptyDir" in volume:
            target.mkdir(parents=True, exist_ok=True)
        elif "hostPath" in volume:
            self.host_path(volume["hostPath"], target)
        elif "configMap" in volume:
            self.write_files(target, self.key_files("ConfigMap", volume["configMap"], self.configmap))
        elif "secret" in volume:
            source = dict(volume["secret"], name=volume["secret"].get("secretName", ""))
            self.write_files(target, self.key_files("Secret", source, self.secret))
        elif "downwardAPI" in volume:
            self.write_files(target, self.downward_files(volume["downwardAPI"]))
        elif "projected" in volume:
            self.write_files(target, self.projected_files(volume["projected"]))
        else:
            kinds = sorted(k for k in volume if k != "name")
            raise SpecError("CreateContainerConfigError",
                            f"volume {volume['name']!r} of type {kinds} is not supported by the local process "
                            "agent (supported: emptyDir, hostPath, configMap, secret, downwardAPI, projected)")

    def host_path(self, spec: dict, target: Path) -> None:
        path, kind = Path(spec["path"]), spec.get("type", "")
        if kind in ("", "DirectoryOrCreate") and not path.exists():
            path.mkdir(parents=True, exist_ok=True)
        elif kind == "FileOrCreate" and not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        elif kind in ("Directory", "File") and not path.exists():
            raise SpecError("CreateContainerConfigError", f"hostPath {path} does not exist (type {kind})")
        if not target.is_symlink():
            target.symlink_to(path)

    def key_files(self, kind: str, source: dict, lookup: Callable[[str], dict | None]) -> dict[str, tuple[bytes, int]]:
        data = lookup(source["name"])
        mode = int(source.get("defaultMode", 0o644))
        if data is None:
            if source.get("optional"):
                return {}
            raise SpecError("CreateContainerConfigError", f'{kind} "{source["name"]}" not found')
        items = source.get("items")
        if not items:
            return {key: (value.encode() if isinstance(value, str) else value, mode) for key, value in data.items()}
        files = {}
        for item in items:
            if item["key"] not in data:
                if source.get("optional"):
                    continue
                raise SpecError("CreateContainerConfigError",
                                f'{kind} "{source["name"]}" has no key {item["key"]!r}')
            value = data[item["key"]]
            files[item["path"]] = (value.encode() if isinstance(value, str) else value, int(item.get("mode", mode)))
        return files

    def downward_files(self, source: dict) -> dict[str, tuple[bytes, int]]:
        mode = int(source.get("defaultMode", 0o644))
        files = {}
        for item in source.get("items", []):
            if "fieldRef" in item:
                value = podspec.field_ref_value(self.pod, item["fieldRef"]["fieldPath"], self.ip, "127.0.0.1")
            else:
                ref = item["resourceFieldRef"]
                container = next((c.spec for c in self.all_containers() if c.name == ref.get("containerName")), {})
                value = podspec.resource_field_value(container, ref["resource"], ref.get("divisor"))
            files[item["path"]] = (value.encode(), int(item.get("mode", mode)))
        return files

    def projected_files(self, projected: dict) -> dict[str, tuple[bytes, int]]:
        mode = int(projected.get("defaultMode", 0o644))
        files: dict[str, tuple[bytes, int]] = {}
        for source in projected.get("sources", []):
            if "serviceAccountToken" in source:
                token_spec = source["serviceAccountToken"]
                files[token_spec["path"]] = (self.token(token_spec).encode(), 0o600)
            elif "configMap" in source:
                files.update(self.key_files("ConfigMap", dict(source["configMap"], defaultMode=mode),
                                            self.configmap))
            elif "secret" in source:
                files.update(self.key_files("Secret", dict(source["secret"], defaultMode=mode), self.secret))
            elif "downwardAPI" in source:
                files.update(self.downward_files(dict(source["downwardAPI"], defaultMode=mode)))
            else:
                raise SpecError("CreateContainerConfigError",
                                f"projected source {sorted(source)} is not supported by the local process agent")
        return files

    def token(self, token_spec: dict) -> str:
        """A pod-bound token from the TokenRequest API, renewed after 80% of its lifetime."""
        account = self.pod["spec"].get("serviceAccountName") or "default"
        key = (account, token_spec.get("audience", ""), int(token_spec.get("expirationSeconds", TOKEN_SECONDS)))
        cached = self.tokens.get(key)
        if cached and time.monotonic() < cached[1]:
            return cached[0]
        request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {
            "expirationSeconds": int(token_spec.get("expirationSeconds", TOKEN_SECONDS)),
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": self.name, "uid": self.uid}}}
        if token_spec.get("audience"):
            request["spec"]["audiences"] = [token_spec["audience"]]
        try:
            answer = self.agent.kube.create(
                f"/api/v1/namespaces/{self.namespace}/serviceaccounts/{account}/token", request)
        except ApiError as error:
            raise SpecError("ContainerCreating", f"token for service account {account!r}: {error}") from error
        refresh_at = time.monotonic() + 0.8 * request["spec"]["expirationSeconds"]
        self.tokens[key] = (answer["status"]["token"], refresh_at)
        return answer["status"]["token"]

    def write_files(self, target: Path, files: dict[str, tuple[bytes, int]]) -> None:
        target.mkdir(parents=True, exist_ok=True)
        manifest = target / ".files"
        previous = set(manifest.read_text().split("\n")) if manifest.exists() else set()
        for relative, (content, mode) in files.items():
            path = target / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists() and path.read_bytes() == content:
                continue
            temporary = path.with_name(f".{path.name}.tmp")
            temporary.write_bytes(content)
            temporary.chmod(mode & 0o777)
            temporary.replace(path)
        for stale in previous - set(files) - {""}:
            (target / stale).unlink(missing_ok=True)
        manifest.write_text("\n".join(sorted(files)))

    def service_account_token(self) -> str | None:
        """The token mounted at the standard service-account path, if any container has it."""
        for container in self.all_containers():
            for mount in container.spec.get("volumeMounts", []):
                if mount["mountPath"].rstrip("/") == podspec.SERVICE_ACCOUNT_DIR:
                    token = self.root / "volumes" / mount["name"] / "token"
                    if token.exists():
                        return token.read_text()
        return None

    def write_kubeconfig(self) -> None:
        token = self.service_account_token()
        if token is None:
            self.kubeconfig = None
            return
        ca = base64.b64encode(self.agent.config.ca_file.read_bytes()).decode()
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "pod",
            "clusters": [{"name": "local", "cluster": {"server": self.agent.config.api_server,
                                                        "certificate-authority-data": ca}}],
            "users": [{"name": "pod", "user": {"token": token}}],
            "contexts": [{"name": "pod", "context": {"cluster": "local", "user": "pod",
                                                      "namespace": self.namespace}}],
        }
        path = self.root / "kubeconfig"
        temporary = path.with_name(".kubeconfig.tmp")
        temporary.write_text(yaml.safe_dump(config))
        temporary.chmod(0o600)
        temporary.replace(path)
        self.kubeconfig = path

    def refresh_volumes(self, now: float) -> None:
        """ConfigMap, Secret, downward API and token contents follow their sources, as with the kubelet."""
        if now < self.next_refresh_at:
            return
        self.next_refresh_at = now + 10.0
        volumes_dir = self.root / "volumes"
        try:
            for volume in self.pod["spec"].get("volumes", []):
                if any(k in volume for k in ("configMap", "secret", "downwardAPI", "projected")):
                    self.materialize(volume, volumes_dir / volume["name"])
            self.write_kubeconfig()
        except (SpecError, ApiError, httpx.HTTPError, OSError) as error:
            log.warning("%s/%s: volume refresh failed: %s", self.namespace, self.name, error)

    # --- processes ------------------------------------------------------------------------------
    def build_process(self, container: ContainerRuntime) -> list[str]:
        spec = container.spec
        if not podspec.image_runnable(spec.get("image", ""), self.agent.config.runnable_images):
            raise SpecError("ErrImageNotRunnable",
                            f"image {spec.get('image', '')!r} cannot run on the local process agent "
                            f"(runnable images match /{self.agent.config.runnable_images}/)")
        own = podspec.container_env(spec, self.pod, self.ip, "127.0.0.1", self.configmap, self.secret)
        argv = [podspec.expand_references(part, own) for part in spec.get("command", []) + spec.get("args", [])]
        if not spec.get("command"):
            raise SpecError("CreateContainerError",
                            "container has no command: the local process agent cannot read image entrypoints")
        croot = self.container_root(container)
        mappings = podspec.path_mappings(str(croot), spec)
        config = self.agent.config
        env = {name: os.environ[name] for name in PASSED_THROUGH_ENV if name in os.environ}
        env["PATH"] = f"{config.path_prefix}:{os.environ.get('PATH', '/usr/bin:/bin')}"
        host, _, port = config.api_server.removeprefix("https://").partition(":")
        env.update({"HOSTNAME": self.name, "KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port,
                    "KUBERNETES_SERVICE_PORT_HTTPS": port, "PIXTRAL_CONTAINER_ROOT": str(croot)})
        if self.kubeconfig:
            env["KUBECONFIG"] = str(self.kubeconfig)
        env.update({name: podspec.rewrite_paths(value, mappings) for name, value in own.items()})
        argv = [podspec.rewrite_paths(part, mappings) for part in argv]
        executable = shutil.which(argv[0], path=env["PATH"]) if "/" not in argv[0] else argv[0]
        if not executable or not os.access(executable, os.X_OK):
            raise SpecError("CreateContainerError",
                            f"executable {argv[0]!r} not found on PATH ({env['PATH']}) of the local process agent")
        working_dir = spec.get("workingDir")
        cwd = Path(podspec.rewrite_paths(working_dir, mappings)) if working_dir else croot
        if working_dir and str(cwd) == working_dir:
            cwd = Path(str(croot) + working_dir)
        cwd.mkdir(parents=True, exist_ok=True)
        container.env, container.cwd, container.mappings = env, str(cwd), mappings
        return [executable, *argv[1:]]

    def start(self, container: ContainerRuntime, now: float) -> None:
        try:
            argv = self.build_process(container)
            probes = {}
            for kind in ("startup", "readiness", "liveness"):
                probe = podspec.parse_probe(container.spec.get(f"{kind}Probe"))
                if probe:
                    probes[kind] = ProbeRunner(kind, probe, self.probe_check(container, probe))
        except SpecError as error:
            if container.state.get("waiting", {}).get("message") != str(error):
                self.event("Warning", "Failed", f"container {container.name}: {error}")
            container.state = {"waiting": {"reason": error.reason, "message": str(error)}}
            container.next_start_at = now + 2.0
            return
        log_path = self.agent.config.pod_logs / f"{self.namespace}_{self.name}_{container.name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as output, open(os.devnull, "rb") as devnull:
            try:
                container.process = subprocess.Popen(argv, stdin=devnull, stdout=output, stderr=subprocess.STDOUT,
                                                     env=container.env, cwd=container.cwd, start_new_session=True)
            except OSError as error:
                container.state = {"waiting": {"reason": "CreateContainerError", "message": str(error)}}
                container.next_start_at = now + 2.0
                return
        started = procs.start_time(container.process.pid) or 0
        container.record = procs.ProcessRecord(f"{self.uid}_{container.name}", container.process.pid, started)
        self.agent.remember(container.record)
        container.started_mono, container.started_wall = now, time.time()
        container.state = {"running": {"startedAt": rfc3339(container.started_wall)}}
        container.stop_deadline = None
        container.stop_reason = ""
        container.probes = probes
        for runner in probes.values():
            runner.reset(now)
        self.event("Normal", "Started", f"Started container {container.name} (pid {container.process.pid}, "
                                        f"pod IP {self.ip}, log {log_path})")

    def probe_check(self, container: ContainerRuntime, probe: Probe) -> Callable[[], tuple[bool, str]]:
        handler = probe.handler
        if probe.kind == "httpGet":
            port = podspec.resolve_port(handler.get("port", 80), container.spec)
            scheme = handler.get("scheme", "HTTP").lower()
            host = handler.get("host") or self.ip
            url = f"{scheme}://{host}:{port}{handler.get('path', '/')}"
            headers = {h["name"]: h["value"] for h in handler.get("httpHeaders", [])}

            def http_check() -> tuple[bool, str]:
                try:
                    response = self.agent.http.get(url, headers=headers, timeout=probe.timeout)
                except httpx.HTTPError as error:
                    return False, f"Get {url}: {type(error).__name__} {error}"
                ok = 200 <= response.status_code < 400
                return ok, f"HTTP probe failed with statuscode: {response.status_code}"
            return http_check
        if probe.kind == "tcpSocket":
            port = podspec.resolve_port(handler["port"], container.spec)
            host = handler.get("host") or self.ip

            def tcp_check() -> tuple[bool, str]:
                try:
                    with socket.create_connection((host, port), timeout=probe.timeout):
                        return True, ""
                except OSError as error:
                    return False, f"dial tcp {host}:{port}: {error}"
            return tcp_check
        if probe.kind == "exec":
            def exec_check() -> tuple[bool, str]:
                argv = [podspec.rewrite_paths(podspec.expand_references(p, container.env), container.mappings)
                        for p in handler.get("command", [])]
                try:
                    result = subprocess.run(argv, env=container.env, cwd=container.cwd, capture_output=True,
                                            timeout=max(probe.timeout, 1.0))
                except (OSError, subprocess.TimeoutExpired) as error:
                    return False, f"exec probe {argv}: {error}"
                output = (result.stdout + result.stderr).decode(errors="replace").strip()[-200:]
                return result.returncode == 0, f"exec probe exited {result.returncode}: {output}"
            return exec_check
        return lambda: (False, "grpc probes are not supported by the local process agent")

    def begin_stop(self, container: ContainerRuntime, grace: float, reason: str, now: float) -> None:
        if not container.running or container.stop_deadline is not None:
            return
        container.stop_deadline = now + grace
        container.stop_reason = reason
        self.event("Normal", "Killing", f"Stopping container {container.name} ({reason}), grace {grace:g}s")
        if grace <= 0:
            procs.signal_group(container.record, signal.SIGKILL)
        else:
            procs.signal_group(container.record, signal.SIGTERM)

    def reap(self, container: ContainerRuntime, now: float) -> int | None:
        """Exit code once the process has ended (its whole process group is killed then)."""
        code = container.process.poll()
        if code is None:
            if container.stop_deadline is not None and now >= container.stop_deadline:
                procs.signal_group(container.record, signal.SIGKILL)
            return None
        try:
            os.killpg(container.process.pid, signal.SIGKILL)   # children left behind by the leader
        except (ProcessLookupError, PermissionError):
            pass
        self.agent.forget(container.record)
        container.process = None
        return code if code >= 0 else 128 - code

    def on_exit(self, container: ContainerRuntime, code: int, now: float) -> None:
        reason = "Completed" if code == 0 else "Error"
        terminated = {"exitCode": code, "reason": reason, "startedAt": rfc3339(container.started_wall),
                      "finishedAt": rfc3339(), "containerID": f"process://{container.record.pid}"}
        if container.stop_reason:
            terminated["message"] = container.stop_reason
        log.info("%s/%s container %s exited with %d", self.namespace, self.name, container.name, code)
        container.probes = {}
        if self.terminating:
            container.state, container.done, container.exit_code = {"terminated": terminated}, True, code
            return
        policy = self.restart_policy
        if container.init and code == 0:
            restart = False
        elif container.init:
            restart = policy != "Never"
        else:
            restart = podspec.should_restart(policy, code)
        if not restart:
            container.state, container.done, container.exit_code = {"terminated": terminated}, True, code
            return
        container.last_state = {"terminated": terminated}
        if now - container.started_mono > 60:
            container.consecutive_failures = 0
        container.consecutive_failures += 1
        delay = podspec.restart_delay(container.consecutive_failures, self.agent.config.restart_backoff_base,
                                      self.agent.config.restart_backoff_cap)
        container.next_start_at = now + delay
        container.restart_count += 1
        message = f"back-off {delay:g}s restarting failed container={container.name} pod={self.name}"
        container.state = {"waiting": {"reason": "CrashLoopBackOff", "message": message}}
        if delay > 0:
            self.event("Warning", "BackOff", message)

    def step_container(self, container: ContainerRuntime, now: float) -> None:
        if container.running:
            code = self.reap(container, now)
            if code is None:
                self.step_probes(container, now)
                return
            self.on_exit(container, code, now)
        if container.done or self.terminating or now < container.next_start_at:
            return
        self.start(container, now)

    def step_probes(self, container: ContainerRuntime, now: float) -> None:
        pool = self.agent.probe_pool
        startup = container.probes.get("startup")
        if startup and not startup.passing:
            if startup.tick(now, pool) == "failed":
                self.event("Warning", "Unhealthy", f"Startup probe failed: {startup.last_message}")
                self.begin_stop(container, podspec.termination_grace_seconds(self.pod),
                                "failed startup probe, will be restarted", now)
            for kind in ("readiness", "liveness"):
                if kind in container.probes:
                    container.probes[kind].reset(now)
            return
        readiness = container.probes.get("readiness")
        if readiness and readiness.tick(now, pool) == "failed":
            self.event("Warning", "Unhealthy", f"Readiness probe failed: {readiness.last_message}")
        liveness = container.probes.get("liveness")
        if liveness and liveness.tick(now, pool) == "failed" and container.stop_deadline is None:
            self.event("Warning", "Unhealthy", f"Liveness probe failed: {liveness.last_message}")
            self.begin_stop(container, podspec.termination_grace_seconds(self.pod),
                            "failed liveness probe, will be restarted", now)

    # --- the pod ------------------------------------------------------------------------------
    def sync(self, now: float) -> None:
        if self.pod["metadata"].get("deletionTimestamp") or self.object_gone:
            self.terminate(now)
            return
        if self.finished:
            return
        if not self.prepared:
            if now < self.next_prepare_at:
                return
            try:
                self.prepare()
                self.prepare_error = None
            except SpecError as error:
                if self.prepare_error != (error.reason, str(error)):
                    self.event("Warning", "FailedMount", str(error))
                self.prepare_error = (error.reason, str(error))
                self.next_prepare_at = now + 2.0
            except (ApiError, httpx.HTTPError, OSError) as error:
                self.prepare_error = ("ContainerCreating", f"preparing volumes: {error}")
                self.next_prepare_at = now + 2.0
            if not self.prepared:
                for container in self.all_containers():
                    reason, message = self.prepare_error or ("ContainerCreating", "")
                    container.state = {"waiting": {"reason": reason, "message": message}}
                self.report()
                return
        self.refresh_volumes(now)
        for container in self.init_containers:
            if container.done and container.exit_code == 0:
                continue
            if container.done:
                break
            self.step_container(container, now)
            break
        if self.init_done():
            for container in self.containers:
                self.step_container(container, now)
        self.report()

    def init_done(self) -> bool:
        return all(c.done and c.exit_code == 0 for c in self.init_containers)

    def init_failed(self) -> bool:
        return any(c.done and c.exit_code != 0 for c in self.init_containers)

    def terminate(self, now: float) -> None:
        """Deletion: SIGTERM every process, SIGKILL after the grace period, then remove the object."""
        if not self.terminating:
            self.terminating = True
            for container in self.all_containers():
                container.next_start_at = float("inf")
        grace = 0.0 if self.object_gone else podspec.termination_grace_seconds(self.pod)
        for container in self.all_containers():
            if container.running:
                self.begin_stop(container, grace, "pod deleted", now)
                code = self.reap(container, now)
                if code is not None:
                    self.on_exit(container, code, now)
        if any(c.running for c in self.all_containers()):
            self.report()
            return
        if not self.object_gone:
            self.report()
            try:
                self.agent.kube.delete(f"/api/v1/namespaces/{self.namespace}/pods/{self.name}",
                                       {"gracePeriodSeconds": 0, "preconditions": {"uid": self.uid}})
            except ApiError as error:
                if error.status not in (404, 409):
                    log.warning("cannot remove pod %s/%s yet: %s", self.namespace, self.name, error)
                    return
            except httpx.HTTPError as error:
                log.warning("cannot remove pod %s/%s yet: %s", self.namespace, self.name, error)
                return
        self.finalized = True
        shutil.rmtree(self.root, ignore_errors=True)
        self.agent.ips.release(self.ip)

    def condition(self, kind: str, ok: bool, reason: str = "") -> dict:
        status = "True" if ok else "False"
        previous = self.condition_times.get(kind)
        if previous is None or previous[0] != status:
            self.condition_times[kind] = (status, rfc3339())
        condition = {"type": kind, "status": status, "lastProbeTime": None,
                     "lastTransitionTime": self.condition_times[kind][1]}
        # null removes a reason left from an earlier False in the strategic merge.
        condition["reason"] = reason if reason and not ok else None
        return condition

    def report(self) -> None:
        spec = self.pod["spec"]
        images = {c["name"]: c.get("image", "") for c in spec.get("initContainers", []) + spec.get("containers", [])}
        states: list[str | int] = []
        for container in self.containers:
            if container.running:
                states.append("running")
            elif container.done:
                states.append(container.exit_code if container.exit_code is not None else 1)
            elif container.last_state:
                states.append("restarting")
            else:
                states.append("waiting")
        phase = podspec.pod_phase(self.restart_policy, not self.init_done(), self.init_failed(), states)
        containers_ready = bool(self.containers) and all(c.ready for c in self.containers)
        gates = [g["conditionType"] for g in spec.get("readinessGates", [])]
        current = {c["type"]: c.get("status") for c in self.pod.get("status", {}).get("conditions", [])}
        gates_ok = all(current.get(g) == "True" for g in gates)
        terminal = phase in ("Succeeded", "Failed")
        conditions = [
            self.condition("PodReadyToStartContainers", self.prepared),
            self.condition("Initialized", self.init_done(), "ContainersNotInitialized"),
            self.condition("ContainersReady", containers_ready and not terminal, "ContainersNotReady"),
            self.condition("Ready", containers_ready and gates_ok and not terminal, "ContainersNotReady"),
        ]
        status = {
            "phase": phase, "conditions": conditions, "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": self.ip, "podIPs": [{"ip": self.ip}], "startTime": rfc3339(self.start_wall),
            "containerStatuses": [c.status(images[c.name]) for c in self.containers],
        }
        if self.init_containers:
            status["initContainerStatuses"] = [c.status(images[c.name]) for c in self.init_containers]
        if status == self.last_status:
            return
        self.last_status = status
        self.agent.writer.status(self.key, {"metadata": {"uid": self.uid}, "status": status})


class Agent:
    def __init__(self, credentials: Credentials, config: AgentConfig):
        # One client per thread: the sync loop, the pod watch, node heartbeats, the status writer.
        self.kube = KubeClient(credentials)
        self.watch_kube = KubeClient(credentials)
        self.heartbeat_kube = KubeClient(credentials)
        self.config = config
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.ips = IpAllocator(config.ip_octet_range)
        self.writer = ApiWriter(KubeClient(credentials), self.stop)
        self.probe_pool = concurrent.futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="probe")
        self.http = httpx.Client(verify=False, follow_redirects=False)
        self.node_names = {node.name for node in config.nodes}
        self.desired: dict[str, dict] = {}
        self.desired_lock = threading.Lock()
        self.pods: dict[str, PodRuntime] = {}
        self.registered_at = rfc3339()
        self.finalized: set[str] = set()   # pods removed by us whose DELETED event may not have arrived

    # --- lookups used while building processes and volumes ---------------------------------------
    def lookup(self, kind: str, namespace: str, name: str) -> dict | None:
        plural = "configmaps" if kind == "ConfigMap" else "secrets"
        obj = self.kube.get_or_none(f"/api/v1/namespaces/{namespace}/{plural}/{name}")
        if obj is None:
            return None
        if kind == "ConfigMap":
            data = dict(obj.get("data") or {})
            data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
            return data
        return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}

    # --- process records (for cleaning up after a crash of the agent) ----------------------------
    def remember(self, record: procs.ProcessRecord) -> None:
        self.config.records_dir.mkdir(parents=True, exist_ok=True)
        (self.config.records_dir / f"{record.name}.json").write_text(json.dumps(record.to_dict()))

    def forget(self, record: procs.ProcessRecord | None) -> None:
        if record:
            (self.config.records_dir / f"{record.name}.json").unlink(missing_ok=True)

    # --- nodes ----------------------------------------------------------------------------------
    def register_nodes(self) -> None:
        self.registered_at = rfc3339()
        for node in self.config.nodes:
            desired = podspec.node_object(node, self.config.kubelet_version, rfc3339(), self.config.kubelet_port)
            existing = self.kube.get_or_none(f"/api/v1/nodes/{node.name}")
            if existing is None:
                self.kube.create("/api/v1/nodes", desired)
            else:
                self.kube.merge_patch(f"/api/v1/nodes/{node.name}", {"metadata": {"labels": desired["metadata"]["labels"]}})
            self.kube.merge_patch(f"/api/v1/nodes/{node.name}/status", {"status": desired["status"]})
            self.clear_not_ready_taints(node.name)
            log.info("node %s registered: %d x nvidia.com/gpu (%s)", node.name, node.gpus, node.gpu_product)

    def clear_not_ready_taints(self, name: str) -> None:
        # The TaintNodesByCondition admission adds not-ready on creation; the node lifecycle
        # controller, which would lift it, is off in this cluster.
        node = self.kube.get(f"/api/v1/nodes/{name}")
        taints = node.get("spec", {}).get("taints") or []
        kept = [t for t in taints if not t["key"].startswith(("node.kubernetes.io/not-ready",
                                                               "node.kubernetes.io/unreachable"))]
        if len(kept) != len(taints):
            self.kube.merge_patch(f"/api/v1/nodes/{name}", {"spec": {"taints": kept or None}})

    def heartbeat(self) -> None:
        for node in self.config.nodes:
            now = time.time()
            self.heartbeat_kube.strategic_patch(f"/api/v1/nodes/{node.name}/status",
                                      {"status": {"conditions": podspec.node_conditions(rfc3339(now), self.registered_at)}})
            path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{node.name}"
            lease_spec = {"holderIdentity": node.name, "leaseDurationSeconds": 40, "renewTime": micro_time(now)}
            if self.heartbeat_kube.get_or_none(path) is None:
                self.heartbeat_kube.create("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", {
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": node.name, "namespace": "kube-node-lease"}, "spec": lease_spec})
            else:
                self.heartbeat_kube.merge_patch(path, {"spec": lease_spec})

    def heartbeat_loop(self) -> None:
        while not self.stop.wait(self.config.heartbeat_seconds):
            try:
                self.heartbeat()
            except (ApiError, httpx.HTTPError) as error:
                log.warning("node heartbeat failed: %s", error)

    # --- pods -----------------------------------------------------------------------------------
    def mine(self, pod: dict) -> bool:
        return pod.get("spec", {}).get("nodeName") in self.node_names

    def watch_loop(self) -> None:
        while not self.stop.is_set():
            try:
                listing = self.watch_kube.get("/api/v1/pods", fieldSelector="spec.nodeName!=")
                with self.desired_lock:
                    self.desired = {p["metadata"]["uid"]: p for p in listing["items"] if self.mine(p)}
                self.wake.set()
                version = listing["metadata"]["resourceVersion"]
                while not self.stop.is_set():
                    for event in self.watch_kube.watch("/api/v1/pods", version, timeout_seconds=60,
                                                 fieldSelector="spec.nodeName!="):
                        obj = event["object"]
                        if event["type"] == "ERROR":
                            raise ApiError(int(obj.get("code", 500)), "WATCH", "/api/v1/pods", json.dumps(obj))
                        version = obj["metadata"]["resourceVersion"]
                        if event["type"] == "BOOKMARK" or not self.mine(obj):
                            continue
                        with self.desired_lock:
                            if event["type"] == "DELETED":
                                self.desired.pop(obj["metadata"]["uid"], None)
                            else:
                                self.desired[obj["metadata"]["uid"]] = obj
                        self.wake.set()
                        if self.stop.is_set():
                            return
            except (ApiError, httpx.HTTPError, ValueError, KeyError) as error:
                log.warning("pod watch interrupted (%s); listing again", error)
                self.stop.wait(1.0)

    def sync_all(self) -> None:
        now = time.monotonic()
        with self.desired_lock:
            desired = dict(self.desired)
        self.finalized &= set(desired)
        for uid, pod in desired.items():
            if uid in self.finalized:
                continue
            runtime = self.pods.get(uid)
            if runtime is None:
                try:
                    runtime = PodRuntime(self, pod)
                except Exception:  # noqa: BLE001 - e.g. no free pod IP: the others still run
                    log.exception("cannot take pod %s/%s", pod["metadata"].get("namespace"), pod["metadata"]["name"])
                    continue
                self.pods[uid] = runtime
            runtime.pod = pod
        for uid, runtime in list(self.pods.items()):
            if uid not in desired:
                runtime.object_gone = True
            try:
                runtime.sync(now)
            except Exception:  # noqa: BLE001 - one broken pod must not stop the others
                log.exception("sync of pod %s/%s failed", runtime.namespace, runtime.name)
            if runtime.finalized:
                del self.pods[uid]
                if uid in desired:
                    self.finalized.add(uid)

    def serve_pod_discovery(self) -> http.server.ThreadingHTTPServer:
        agent = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                if self.path.split("?")[0] == "/healthz":
                    body = b"ok"
                elif self.path.split("?")[0] == "/targets":
                    with agent.desired_lock:
                        pods = list(agent.desired.values())
                    body = json.dumps(podsd.target_groups(pods)).encode()
                else:
                    self.send_error(404, "try /targets")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass  # Prometheus asks every second

        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.config.pod_sd_port), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name="pod-sd", daemon=True).start()
        log.info("pod discovery for Prometheus on http://127.0.0.1:%d/targets", self.config.pod_sd_port)
        return server

    def container_running(self, namespace: str, pod: str, container: str) -> bool:
        for runtime in list(self.pods.values()):
            if (runtime.namespace, runtime.name) == (namespace, pod):
                return any(c.name == container and c.running for c in runtime.all_containers())
        return False

    def serve_container_logs(self) -> http.server.ThreadingHTTPServer:
        """The kubelet's /containerLogs endpoint, so `kubectl logs [-f]` reads the pod log files."""
        agent = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                url = urllib.parse.urlsplit(self.path)
                try:
                    namespace, pod, container, lines, follow, limit = podspec.parse_log_request(
                        url.path, urllib.parse.parse_qs(url.query))
                except ValueError as error:
                    self.send_error(400, str(error))
                    return
                path = agent.config.pod_logs / f"{namespace}_{pod}_{container}.log"
                if not path.exists():
                    self.send_error(404, f"no log for container {container} of pod {namespace}/{pod} yet")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                with open(path, "rb") as log_file:
                    self.wfile.write(podspec.tail(log_file.read(), lines, limit))
                    self.wfile.flush()
                    # Follow while the container runs; the client ending the request ends it too.
                    while follow and not agent.stop.is_set():
                        chunk = log_file.read()
                        if chunk:
                            self.wfile.write(chunk)
                            self.wfile.flush()
                        elif not agent.container_running(namespace, pod, container):
                            break
                        else:
                            time.sleep(0.5)

            def log_message(self, *args: object) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.config.kubelet_port), Handler)
        server.daemon_threads = True
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.config.ca_file))
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_cert_chain(str(self.config.kubelet_cert), str(self.config.kubelet_key))
        server.socket = context.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, name="kubelet-logs", daemon=True).start()
        log.info("container logs (kubectl logs) on https://127.0.0.1:%d", self.config.kubelet_port)
        return server

    def run(self) -> int:
        self.cleanup_orphans()
        logs_server = self.serve_container_logs() if self.config.kubelet_port and self.config.kubelet_cert else None
        sd_server = self.serve_pod_discovery() if self.config.pod_sd_port else None
        while not self.stop.is_set():
            try:
                self.register_nodes()
                break
            except (ApiError, httpx.HTTPError) as error:
                log.warning("node registration failed (%s); retrying", error)
                self.stop.wait(2.0)
        threads = [threading.Thread(target=self.heartbeat_loop, name="heartbeat", daemon=True),
                   threading.Thread(target=self.watch_loop, name="pod-watch", daemon=True)]
        for thread in threads:
            thread.start()
        log.info("agent running for nodes %s", sorted(self.node_names))
        while not self.stop.is_set():
            self.wake.wait(0.25)
            self.wake.clear()
            try:
                self.sync_all()
            except Exception:  # noqa: BLE001 - the agent keeps serving its other pods
                log.exception("sync loop failed; retrying")
                self.stop.wait(1.0)
        for server in (sd_server, logs_server):
            if server:
                server.shutdown()
        self.shutdown()
        return 0

    def shutdown(self) -> None:
        """Stops every pod process: SIGTERM, then SIGKILL after a short grace."""
        running = [(p, c) for p in self.pods.values() for c in p.all_containers() if c.running]
        log.info("stopping: %d container processes", len(running))
        for _, container in running:
            procs.signal_group(container.record, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(c.process.poll() is None for _, c in running):
            time.sleep(0.1)
        for _, container in running:
            if container.process.poll() is None:
                procs.signal_group(container.record, signal.SIGKILL)
                container.process.wait(5)
            self.forget(container.record)
        self.probe_pool.shutdown(wait=False, cancel_futures=True)

    def cleanup_orphans(self) -> None:
        """Kills pod processes left by an agent that did not stop cleanly."""
        kill_recorded_processes(self.config.records_dir)


def kill_recorded_processes(records_dir: Path) -> int:
    killed = 0
    if not records_dir.is_dir():
        return 0
    for path in records_dir.glob("*.json"):
        try:
            record = procs.ProcessRecord.from_dict(json.loads(path.read_text()))
        except (ValueError, KeyError):
            path.unlink(missing_ok=True)
            continue
        if record.alive():
            procs.stop(record, grace_seconds=2)
            killed += 1
        path.unlink(missing_ok=True)
    return killed
