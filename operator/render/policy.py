"""PodDisruptionBudget and NetworkPolicy for the runtime pods, and how Prometheus finds the pods: the
prometheus.io annotations or a ServiceMonitor/PodMonitor (docs/settings.md#monitoring)."""

from __future__ import annotations

import re
from typing import Any

from pixtral_operator.render import labels as L
from pixtral_operator.settings import OperatorSettings
from pixtral_operator.spec import PixtralSpec

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


def runtime_pdb(spec: PixtralSpec) -> dict[str, Any]:
    # Voluntary disruptions (node drains) take at most one model replica at a time.
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": L.runtime_policy_name(spec.name), "namespace": spec.namespace, "labels": L.common_labels(spec.name, "runtime")},
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": L.runtime_selector_all_tracks(spec.name)},
        },
    }


def runtime_network_policy(spec: PixtralSpec, settings: OperatorSettings) -> dict[str, Any]:
    """Only this deployment's router reaches vLLM: tenants go through its keys, limits and image
    admission. Prometheus in the namespaces of `settings.metrics_from_namespaces` may reach the same
    port, because vLLM serves /metrics there. No rule admits the health port: the kubelet's probes
    come from the node, which enforcers (Calico, Cilium, kube-router) let through without a rule.
    Only ingress is restricted; the runtime pods may still download from the hub."""
    tcp = "TCP"
    ingress: list[dict[str, Any]] = [
        {
            "from": [{"podSelector": {"matchLabels": L.router_selector(spec.name)}}],
            "ports": [{"protocol": tcp, "port": L.RUNTIME_HTTP_PORT}],
        }
    ]
    if settings.metrics_from_namespaces:
        ingress.append(
            {
                "from": [
                    {
                        "namespaceSelector": {
                            "matchExpressions": [
                                {
                                    "key": NAMESPACE_NAME_LABEL,
                                    "operator": "In",
                                    "values": list(settings.metrics_from_namespaces),
                                }
                            ]
                        }
                    }
                ],
                "ports": [{"protocol": tcp, "port": L.RUNTIME_HTTP_PORT}],
            }
        )
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": L.runtime_policy_name(spec.name), "namespace": spec.namespace, "labels": L.common_labels(spec.name, "runtime")},
        "spec": {
            "podSelector": {"matchLabels": L.runtime_selector_all_tracks(spec.name)},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }


# What the default autoscaler queries select (operator/prometheus.py: `deployment`, `track`, besides the
# `namespace` and `pod` labels every Prometheus Operator target has) <- the pod label each comes from.
QUERY_LABELS = {"deployment": L.DEPLOYMENT_LABEL, "track": L.TRACK_LABEL}
MONITORING_API_VERSION = "monitoring.coreos.com/v1"
MONITOR_KINDS = {"podmonitor": "PodMonitor"}
# component label -> the container port serving /metrics: vLLM's own port, the router's metrics port.
METRICS_PORT_NAMES = {"runtime": "http", "router": "metrics"}


def prometheus_pod_label(pod_label: str) -> str:
    """The `__meta_kubernetes_pod_label_*` name Prometheus' Kubernetes discovery gives a pod label."""
    return "__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", pod_label)


def monitor_relabelings(component: str) -> list[dict[str, Any]]:
    """Keep the pods of one component, then copy the pod labels to exactly the target labels the
    queries select (`podTargetLabels` would name them `serving_pixtral_dev_deployment`/`_track`). A
    router pod has no track label, so its target gets none and the router's own per-request `track`
    label survives the scrape."""
    keep = {"action": "keep", "sourceLabels": [prometheus_pod_label(L.COMPONENT_LABEL)], "regex": component}
    return [keep] + [
        {"action": "replace", "sourceLabels": [prometheus_pod_label(pod_label)], "targetLabel": target}
        for target, pod_label in QUERY_LABELS.items()
    ]


def pod_scrape_annotations(settings: OperatorSettings, port: int) -> dict[str, str]:
    """The prometheus.io/* pod annotations, only when no monitor object does the same job."""
    return L.scrape_annotations(port) if settings.monitoring == "annotations" else {}


def pod_monitor(spec: PixtralSpec, settings: OperatorSettings) -> dict[str, Any]:
    """Scrapes the runtime pods of both tracks and the router pods, each on its metrics port."""
    labels = {**dict(settings.monitor_labels), **L.common_labels(spec.name, "monitoring")}
    return {
        "apiVersion": MONITORING_API_VERSION,
        "kind": "PodMonitor",
        "metadata": {"name": L.runtime_policy_name(spec.name), "namespace": spec.namespace, "labels": labels},
        "spec": {
            "selector": {"matchLabels": {L.DEPLOYMENT_LABEL: spec.name}},
            "podMetricsEndpoints": [
                {"port": port, "path": "/metrics", "interval": settings.monitor_interval, "relabelings": monitor_relabelings(component)}
                for component, port in METRICS_PORT_NAMES.items()
            ],
        },
    }


def workload_monitor(spec: PixtralSpec, settings: OperatorSettings) -> dict[str, Any] | None:
    """The monitor object `settings.monitoring` asks for; None in the annotations mode."""
    return pod_monitor(spec, settings) if settings.monitoring == "podmonitor" else None
