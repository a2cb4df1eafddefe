"""Prometheus configuration for the local cluster (pure rendering).

Targets come from e2e/podsd.py's http_sd endpoint, which serves what kubernetes_sd_configs
role pod would (see podsd.py): Debian's Prometheus is built without kubernetes_sd_configs.
"""

from __future__ import annotations

from dataclasses import dataclass

from .podsd import sanitize

# Pod label -> metric label, besides every pod label via labelmap.
KEPT_POD_LABELS = {
    "serving.pixtral.dev/deployment": "deployment",
    "serving.pixtral.dev/track": "track",
}


def meta_label(pod_label: str) -> str:
    """Prometheus' __meta name of a pod label."""
    return f"__meta_kubernetes_pod_label_{sanitize(pod_label)}"


@dataclass(frozen=True)
class ScrapeSettings:
    pod_sd_url: str          # e2e/podsd.py's http_sd endpoint (Kubernetes pod discovery)
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
        "rule_files": list(settings.rule_files),
        "scrape_configs": [{
            "job_name": "kubernetes-pods",
            "http_sd_configs": [{"url": settings.pod_sd_url, "refresh_interval": settings.scrape_interval}],
            "relabel_configs": relabel,
        }],
    }
