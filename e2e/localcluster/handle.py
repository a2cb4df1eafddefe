"""A ready-to-use view of a running cluster for tests, the demo and benchmarks."""

from __future__ import annotations

import functools
import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from . import images, monitor_report, monitoring
from .cluster import ClusterInfo, crictl_command
from .kube import KubeClient
from .waiting import T, WaitTimeout, wait_for


@dataclass
class Cluster:
    info: ClusterInfo

    @property
    def kubeconfig(self) -> Path:
        return self.info.kubeconfig

    @property
    def kubectl_path(self) -> Path:
        return self.info.kubectl

    @property
    def helm_path(self) -> Path:
        return self.info.helm

    @property
    def prometheus_url(self) -> str:
        return self.info.prometheus_url

    @property
    def managed_prometheus_url(self) -> str:
        return self.info.managed_prometheus_url

    @property
    def managed_prometheus_in_cluster_url(self) -> str:
        return self.info.managed_prometheus_in_cluster_url

    @property
    def api_server(self) -> str:
        return self.info.api_server

    @property
    def node_names(self) -> list[str]:
        return list(self.info.nodes["names"])

    def pod_log(self, namespace: str, pod: str, container: str, previous: bool = False) -> str:
        """The container's log through the API server and the kubelet (`kubectl logs`)."""
        args = ["logs", "-n", namespace, pod, "-c", container] + (["--previous"] if previous else [])
        return self.kubectl(*args).stdout

    def crictl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return self._run([*crictl_command(self.info.crictl, self.info.containerd_socket), *args], True, None, timeout)

    def sandboxes(self, namespace: str, labels: dict[str, str] | None = None) -> list[dict]:
        """Running (ready) pod sandboxes of a namespace on the node, optionally with these pod
        labels, from containerd through the CRI. Stopped sandboxes linger until the kubelet's
        garbage collection and hold no process."""
        selectors = [arg for key, value in (labels or {}).items() for arg in ("--label", f"{key}={value}")]
        listed = json.loads(self.crictl("pods", "--namespace", namespace, "--state", "ready", *selectors,
                                        "-o", "json").stdout or "{}")
        return [item for item in listed.get("items", [])
                if item.get("metadata", {}).get("namespace") == namespace]

    def wait_for_managed_scrape(self, predicate: Callable[[], T], namespace: str, what: str) -> T:
        """wait_for with the bound a new monitor needs to reach the managed Prometheus; on timeout the
        error says which step (Operator, kubelet, reloader, discovery, scrape) did not happen."""
        try:
            return wait_for(predicate, monitoring.MONITOR_DISCOVERY_SECONDS, what)
        except WaitTimeout as timeout:
            raise WaitTimeout(f"{timeout}; {monitor_report.report(self.rest, self.managed_prometheus_url, namespace)}"
                              ) from None

    def load_rules(self, name: str, rules: dict, timeout: float = 30) -> None:
        """Puts a Prometheus rule file (`groups: [...]`) in place as `name` and reloads Prometheus,
        returning once its rules API lists every group of the file."""
        path = self.info.paths.prometheus_rules / f"{name}.yaml"
        path.write_text(json.dumps(rules))  # JSON is YAML, and keeps {{ templates }} as they are
        self._reload_prometheus({group["name"] for group in rules["groups"]}, timeout)

    def remove_rules(self, name: str, timeout: float = 30) -> None:
        path = self.info.paths.prometheus_rules / f"{name}.yaml"
        groups = {group["name"] for group in json.loads(path.read_text())["groups"]} if path.exists() else set()
        path.unlink(missing_ok=True)
        self._reload_prometheus(set(), timeout, gone=groups)

    def _reload_prometheus(self, groups: set[str], timeout: float, gone: set[str] = frozenset()) -> None:
        httpx.post(f"{self.prometheus_url}/-/reload", timeout=10).raise_for_status()

        def loaded() -> bool:
            listed = httpx.get(f"{self.prometheus_url}/api/v1/rules", timeout=5).json()["data"]["groups"]
            names = {group["name"] for group in listed}
            return groups <= names and not (gone & names)

        wait_for(loaded, timeout, f"Prometheus to load its rule files (log: {self.info.paths.logs / 'prometheus.log'})")

    def project_images(self, say=print) -> dict[str, str]:
        """The operator, router and CPU runtime images, built from this checkout if needed and
        imported into the node's containerd: {"operator", "router", "runtime"} -> reference."""
        built = images.ensure_images(str(self.info.containerd_socket), say=say)
        return {"operator": built["operator"], "router": built["router"], "runtime": built["runtime-cpu"]}

    def env(self) -> dict[str, str]:
        """Environment for tools run against the cluster: KUBECONFIG set, kubectl and helm on PATH."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PATH"] = f"{self.kubectl_path.parent}:{self.helm_path.parent}:{env.get('PATH', '')}"
        return env

    def kubectl(self, *args: str, check: bool = True, input: str | None = None,
                timeout: float = 60) -> subprocess.CompletedProcess:
        return self._run([str(self.kubectl_path), f"--kubeconfig={self.kubeconfig}", *args], check, input, timeout)

    def helm(self, *args: str, check: bool = True, input: str | None = None,
             timeout: float = 120) -> subprocess.CompletedProcess:
        return self._run([str(self.helm_path), f"--kubeconfig={self.kubeconfig}", *args], check, input, timeout)

    def _run(self, argv: list[str], check: bool, input: str | None, timeout: float) -> subprocess.CompletedProcess:
        result = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=timeout, env=self.env())
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(argv[:1] + argv[2:])} exited {result.returncode}:\n"
                                 f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
        return result

    @functools.cached_property
    def rest(self) -> KubeClient:
        """The project's small JSON client (admin credentials)."""
        return self.info.client()

    @functools.cached_property
    def api(self):
        """An ApiClient of the official `kubernetes` package, configured from the kubeconfig."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    @property
    def core(self):
        from kubernetes import client

        return client.CoreV1Api(self.api)

    @property
    def apps(self):
        from kubernetes import client

        return client.AppsV1Api(self.api)

    def close(self) -> None:
        if "rest" in self.__dict__:
            self.rest.close()
        if "api" in self.__dict__:
            self.api.close()
