"""Where a namespace's monitors stand on their way into the managed Prometheus, for a test that
waited too long: which step of Operator -> Secret -> kubelet -> reloader -> discovery -> scrape did
not happen. Each step that cannot be read says why instead of hiding the others."""

from __future__ import annotations

import base64
import gzip
import time
from collections.abc import Callable
from typing import Any

import httpx
import yaml

from . import monitoring
from .kube import KubeClient


def job_names(config_yaml: str, namespace: str) -> list[str]:
    """The scrape jobs the Operator generated for the namespace's monitors (`podMonitor/<ns>/<name>/<i>`)."""
    jobs = (yaml.safe_load(config_yaml) or {}).get("scrape_configs") or []
    return sorted(job["job_name"] for job in jobs if f"/{namespace}/" in job.get("job_name", ""))


def target_lines(targets: list[dict[str, Any]], namespace: str) -> list[str]:
    return [f"{t.get('scrapePool')} {t.get('labels', {}).get('pod', '?')} {t.get('health')}"
            + (f" ({t['lastError']})" if t.get("lastError") else "")
            for t in targets
            if t.get("discoveredLabels", {}).get("__meta_kubernetes_namespace") == namespace
            or t.get("labels", {}).get("namespace") == namespace]


def _step(what: str, read: Callable[[], str]) -> str:
    try:
        return f"{what}: {read()}"
    except Exception as error:  # noqa: BLE001 - a report, the other steps still count
        return f"{what}: unreadable ({error!r})"


def report(rest: KubeClient, prometheus_url: str, namespace: str) -> str:
    def generated() -> str:
        secret = rest.get(f"/api/v1/namespaces/{monitoring.NAMESPACE}/secrets/{monitoring.CONFIG_SECRET}")
        config = gzip.decompress(base64.b64decode(secret["data"][monitoring.CONFIG_SECRET_KEY])).decode()
        return f"{job_names(config, namespace)} (Secret resourceVersion {secret['metadata']['resourceVersion']})"

    def loaded() -> str:
        config = httpx.get(f"{prometheus_url}/api/v1/status/config", timeout=5).json()["data"]["yaml"]
        info = httpx.get(f"{prometheus_url}/api/v1/status/runtimeinfo", timeout=5).json()["data"]
        return (f"{job_names(config, namespace)}, last reload {info.get('lastConfigTime')} "
                f"(success: {info.get('reloadConfigSuccess')}; now {time.strftime('%H:%M:%SZ', time.gmtime())})")

    def scraped() -> str:
        targets = httpx.get(f"{prometheus_url}/api/v1/targets", params={"state": "active"},
                            timeout=5).json()["data"]["activeTargets"]
        return str(target_lines(targets, namespace))

    return "; ".join((_step("jobs in the Operator's Secret", generated),
                      _step("jobs Prometheus loaded", loaded),
                      _step("its targets", scraped)))
