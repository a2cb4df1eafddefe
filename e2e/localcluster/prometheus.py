"""Configuration of the local cluster's host Prometheus (pure rendering).

Prometheus v3 (built from its Go module by e2e/tools/build-binaries.sh) finds pods itself through
`kubernetes_sd_configs` role pod, as the API server's `prometheus` client (read-only RBAC in
addons.prometheus_rbac), and keeps those annotated prometheus.io/scrape=true: the plain
annotation-scraping path many clusters use. The Prometheus Operator path (PodMonitors) is the
in-cluster Prometheus of localcluster/monitoring.py.
"""

from __future__ import annotations

from dataclasses import dataclass

# Pod label -> metric label, besides every pod label via labelmap.
KEPT_POD_LABELS = {
    "serving.pixtral.dev/deployment": "deployment",
    "serving.pixtral.dev/track": "track",
}


def sanitize(name: str) -> str:
    """Prometheus' label-name sanitising: every character outside [a-zA-Z0-9_] becomes '_'."""
    return "".join(c if (c.isascii() and c.isalnum()) or c == "_" else "_" for c in name)


def meta_label(pod_label: str) -> str:
    """Prometheus' __meta name of a pod label."""
    return f"__meta_kubernetes_pod_label_{sanitize(pod_label)}"


@dataclass(frozen=True)
class ApiAccess:
    """How Prometheus reaches the API server for discovery: its URL and a client certificate."""
    server: str
    ca_file: str
    cert_file: str
    key_file: str


@dataclass(frozen=True)
class ScrapeSettings:
    api: ApiAccess
    scrape_interval: str = "1s"
    scrape_timeout: str = "1s"
    # Rule files Prometheus (re)loads on /-/reload: tests put alert rules there (Cluster.load_rules).
    rule_files: tuple[str, ...] = ()


def render_config(settings: ScrapeSettings) -> dict:
    """Scrapes running pods annotated prometheus.io/scrape=true at prometheus.io/port and /path."""
    relabel = [
        {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"], "action": "keep",
         "regex": "true"},
        {"source_labels": ["__meta_kubernetes_pod_phase"], "action": "keep", "regex": "Running"},
        {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_path"], "action": "replace",
         "regex": "(.+)", "target_label": "__metrics_path__"},
        {"source_labels": ["__address__", "__meta_kubernetes_pod_annotation_prometheus_io_port"],
         "action": "replace", "regex": r"([^:]+)(?::\d+)?;(\d+)", "replacement": "$1:$2",
         "target_label": "__address__"},
        {"action": "labelmap", "regex": "__meta_kubernetes_pod_label_(.+)"},
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        {"source_labels": ["__meta_kubernetes_pod_node_name"], "target_label": "node"},
    ]
    for pod_label, metric_label in KEPT_POD_LABELS.items():
        relabel.append({"source_labels": [meta_label(pod_label)], "target_label": metric_label})
    api = settings.api
    return {
        "global": {"scrape_interval": settings.scrape_interval, "scrape_timeout": settings.scrape_timeout,
                   "evaluation_interval": settings.scrape_interval},
        "rule_files": list(settings.rule_files),
        "scrape_configs": [{
            "job_name": "kubernetes-pods",
            "kubernetes_sd_configs": [{
                "role": "pod", "api_server": api.server,
                "tls_config": {"ca_file": api.ca_file, "cert_file": api.cert_file, "key_file": api.key_file},
            }],
            "relabel_configs": relabel,
        }],
    }
