"""PodDisruptionBudget for the runtime pods and the optional ServiceMonitor."""

from __future__ import annotations

from typing import Any

from pixtral_operator.render import labels as L
from pixtral_operator.spec import PixtralSpec


def runtime_pdb(spec: PixtralSpec) -> dict[str, Any]:
    # Voluntary disruptions (node drains) take at most one model replica at a time.
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": f"{spec.name}-runtime", "namespace": spec.namespace, "labels": L.common_labels(spec.name, "runtime")},
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": {L.DEPLOYMENT_LABEL: spec.name, L.COMPONENT_LABEL: "runtime"}},
        },
    }


def service_monitor(spec: PixtralSpec) -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": L.common_labels(spec.name, "monitoring")},
        "spec": {
            "selector": {"matchLabels": {L.DEPLOYMENT_LABEL: spec.name}},
            "endpoints": [{"port": "http", "path": "/metrics", "interval": "15s"}],
            "podTargetLabels": [L.DEPLOYMENT_LABEL, L.TRACK_LABEL],
        },
    }
