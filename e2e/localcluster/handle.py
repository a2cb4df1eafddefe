"""A ready-to-use view of a running cluster for tests, the demo and benchmarks."""

from __future__ import annotations

import functools
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .cluster import ClusterInfo
from .kube import KubeClient


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
    def api_server(self) -> str:
        return self.info.api_server

    @property
    def node_names(self) -> list[str]:
        return list(self.info.nodes["names"])

    @property
    def pod_logs(self) -> Path:
        return self.info.paths.pod_logs

    def pod_log(self, namespace: str, pod: str, container: str) -> Path:
        return self.pod_logs / f"{namespace}_{pod}_{container}.log"

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
