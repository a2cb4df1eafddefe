"""Names and labels shared by every child object. Names are deterministic: reconciling twice
finds the same objects.

Every child is named `<PixtralDeployment>-<suffix>`, with suffixes that contain no hyphen and differ
within one kind (CHILD_SUFFIXES). Two PixtralDeployments of one namespace can then never derive the
same name for the same kind: `a-x` == `b-y` with hyphen-free suffixes means x == y and so a == b
(an unsuffixed name would collide: `demo-stable`'s router Service would be `demo`'s stable Service)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DEPLOYMENT_LABEL = "serving.pixtral.dev/deployment"
TRACK_LABEL = "serving.pixtral.dev/track"
COMPONENT_LABEL = "app.kubernetes.io/component"
SPEC_HASH_ANNOTATION = "serving.pixtral.dev/spec-hash"
MANAGED_BY = "pixtral-operator"
FIELD_MANAGER = "pixtral-operator"
# The autoscaler owns a track's spec.replicas under its own field manager (through /scale), so the
# reconcile's server-side apply, which leaves replicas out while autoscaling is on, never takes it back.
AUTOSCALER_FIELD_MANAGER = "pixtral-autoscaler"

RUNTIME_HTTP_PORT = 8000
RUNTIME_HEALTH_PORT = 8081
ROUTER_HTTP_PORT = 8080
# The router's /metrics, apart from the tenant port (docs/router.md, "Isolation").
ROUTER_METRICS_PORT = 9090
ROUTER_SERVICE_PORT = 80
TRACK_HEADER = "x-pixtral-track"


ROUTER_SUFFIX = "router"
RUNTIME_SUFFIX = "runtime"
INTERNAL_KEY_SUFFIX = "apikey"
# kind -> the suffixes of the children of that kind (tracks name their Deployment and Service).
CHILD_SUFFIXES = {
    "Deployment": ("stable", "canary", ROUTER_SUFFIX),
    "Service": ("stable", "canary", ROUTER_SUFFIX),
    "ConfigMap": (ROUTER_SUFFIX,),
    "ServiceAccount": (ROUTER_SUFFIX,),
    "Role": (ROUTER_SUFFIX,),
    "RoleBinding": (ROUTER_SUFFIX,),
    "PodDisruptionBudget": (RUNTIME_SUFFIX,),
    "NetworkPolicy": (RUNTIME_SUFFIX,),
    "PodMonitor": (RUNTIME_SUFFIX,),
    "Secret": (INTERNAL_KEY_SUFFIX,),
}


def child_name(name: str, suffix: str) -> str:
    return f"{name}-{suffix}"


def track_deployment_name(name: str, track: str) -> str:
    return child_name(name, track)


def track_service_name(name: str, track: str) -> str:
    return child_name(name, track)


def router_name(name: str) -> str:
    """The router's Deployment, Service (the endpoint), ConfigMap, ServiceAccount, Role and RoleBinding."""
    return child_name(name, ROUTER_SUFFIX)


def runtime_policy_name(name: str) -> str:
    """The runtime pods' PodDisruptionBudget and NetworkPolicy, and the PodMonitor."""
    return child_name(name, RUNTIME_SUFFIX)


def internal_key_name(name: str) -> str:
    """The Secret with the internal API key vLLM requires and only the router sends."""
    return child_name(name, INTERNAL_KEY_SUFFIX)


def common_labels(name: str, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "pixtral",
        "app.kubernetes.io/instance": name,
        COMPONENT_LABEL: component,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/part-of": "pixtral-operator",
        DEPLOYMENT_LABEL: name,
    }


def runtime_selector(name: str, track: str) -> dict[str, str]:
    return {DEPLOYMENT_LABEL: name, TRACK_LABEL: track, COMPONENT_LABEL: "runtime"}


def runtime_selector_all_tracks(name: str) -> dict[str, str]:
    """The runtime pods of both tracks (PodDisruptionBudget, NetworkPolicy)."""
    return {DEPLOYMENT_LABEL: name, COMPONENT_LABEL: "runtime"}


def runtime_labels(name: str, track: str) -> dict[str, str]:
    return {**common_labels(name, "runtime"), TRACK_LABEL: track}


def router_selector(name: str) -> dict[str, str]:
    return {DEPLOYMENT_LABEL: name, COMPONENT_LABEL: "router"}


def scrape_annotations(port: int) -> dict[str, str]:
    """Pod annotations asking Prometheus (kubernetes_sd `pod` role, or the local cluster's agent) to scrape /metrics."""
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(port), "prometheus.io/path": "/metrics"}


def selector_string(selector: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items()))


def owner_reference(owner: Mapping[str, Any]) -> dict[str, Any]:
    meta = owner["metadata"]
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
