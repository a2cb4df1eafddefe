"""PodDisruptionBudget and NetworkPolicy for the runtime pods, and the optional ServiceMonitor."""

from __future__ import annotations

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


def service_monitor(spec: PixtralSpec) -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": L.runtime_policy_name(spec.name), "namespace": spec.namespace, "labels": L.common_labels(spec.name, "monitoring")},
        "spec": {
            "selector": {"matchLabels": {L.DEPLOYMENT_LABEL: spec.name}},
            "endpoints": [{"port": "http", "path": "/metrics", "interval": "15s"}],
            "podTargetLabels": [L.DEPLOYMENT_LABEL, L.TRACK_LABEL],
        },
    }
