"""Prometheus configuration for the local cluster (pure rendering)."""

from __future__ import annotations

from dataclasses import dataclass

# Pod label -> metric label, besides every pod label via labelmap.
KEPT_POD_LABELS = {
    "serving.pixtral.dev/deployment": "deployment",
    "serving.pixtral.dev/track": "track",
}


def meta_label(pod_label: str) -> str:
    """Prometheus' __meta name of a pod label: every character outside [a-zA-Z0-9_] becomes '_'."""
    sanitized = "".join(c if c.isalnum() or c == "_" else "_" for c in pod_label)
    return f"__meta_kubernetes_pod_label_{sanitized}"


@dataclass(frozen=True)
class ScrapeSettings:
    api_server: str
    ca_file: str
    cert_file: str
    key_file: str
    scrape_interval: str = "1s"
    scrape_timeout: str = "1s"


def render_config(settings: ScrapeSettings) -> dict:
    """Scrapes running pods annotated prometheus.io/scrape=true at prometheus.io/port and /path."""
    relabel = [
        {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"], "action": "keep",
         "regex": "true"},
        {"source_labels": ["__meta_kubernetes_pod_phase"], "action": "keep", "regex": "Running"},
        {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_path"], "action": "replace",
         "regex": "(.+)", "target_label": "__metrics_path__"},
        {"source_labels": ["__meta_kubernetes_pod_ip", "__meta_kubernetes_pod_annotation_prometheus_io_port"],
         "action": "replace", "regex": r"(.+);(\d+)", "replacement": "$1:$2", "target_label": "__address__"},
        {"action": "labelmap", "regex": "__meta_kubernetes_pod_label_(.+)"},
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        {"source_labels": ["__meta_kubernetes_pod_node_name"], "target_label": "node"},
    ]
    for pod_label, metric_label in KEPT_POD_LABELS.items():
        relabel.append({"source_labels": [meta_label(pod_label)], "target_label": metric_label})
    return {
        "global": {"scrape_interval": settings.scrape_interval, "scrape_timeout": settings.scrape_timeout,
                   "evaluation_interval": settings.scrape_interval},
        "scrape_configs": [{
            "job_name": "kubernetes-pods",
            "kubernetes_sd_configs": [{
                "role": "pod",
                "api_server": settings.api_server,
                "tls_config": {"ca_file": settings.ca_file, "cert_file": settings.cert_file,
                               "key_file": settings.key_file},
            }],
            "relabel_configs": relabel,
        }],
    }
