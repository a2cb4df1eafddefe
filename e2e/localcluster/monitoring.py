"""The in-cluster monitoring stack, as kube-prometheus-stack runs it (pure rendering): the Prometheus
Operator (its CRDs and ClusterRoles come with the release it was built from) managing one Prometheus
that selects every ServiceMonitor, PodMonitor and PrometheusRule in the cluster.

`cluster.py up` applies these after CoreDNS. The host Prometheus (localcluster/prometheus.py) stays
beside it for the pod-annotation path; this one is what `workloadMonitoring.mode=podmonitor` feeds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from . import network
from .images import NOBODY_UID
from .prometheus import ScrapeSettings

NAMESPACE = "monitoring"  # the chart's default metricsFromNamespaces: the runtime NetworkPolicy admits it
OPERATOR_NAME = "prometheus-operator"
PROMETHEUS_NAME = "local"
PROMETHEUS_SERVICE = "prometheus"
PROMETHEUS_PORT = 9090
# The Operator writes the configuration it generates into this Secret (gzipped), mounted in the pod.
CONFIG_SECRET = f"prometheus-{PROMETHEUS_NAME}"
CONFIG_SECRET_KEY = "prometheus.yaml.gz"
# How often the config reloader re-reads the mounted configuration. Its own default is 3 minutes,
# and its file watch does not see the kubelet's updates of a Secret volume (it watches the file,
# which the kubelet replaces by swapping a symlink): measured here, a Secret change reached
# Prometheus 156 s later, 64 s for the kubelet and 92 s for the reloader's poll. The Prometheus
# resource has no field for it; RELOADER_ARGS below repeat what v0.85's Operator generates.
RELOADER_WATCH_INTERVAL = "5s"
RELOADER_ARGS = (
    "--listen-address=:8080",
    "--reload-url=http://localhost:9090/-/reload",
    "--config-file=/etc/prometheus/config/prometheus.yaml.gz",
    "--config-envsubst-file=/etc/prometheus/config_out/prometheus.env.yaml",
    f"--watched-dir=/etc/prometheus/rules/prometheus-{PROMETHEUS_NAME}-rulefiles-0",
    f"--watch-interval={RELOADER_WATCH_INTERVAL}",
)
# A new monitor is scraped once the Operator has rewritten CONFIG_SECRET, the kubelet has refreshed
# the mounted copy (on its periodic pod sync: a minute plus up to half of that as jitter), the
# reloader has polled it and Prometheus has discovered and scraped the pods: up to 2 minutes on a
# busy node, against about a second on the annotation path. (With the reloader's default poll,
# as kube-prometheus-stack runs it, add up to 3 minutes.)
MONITOR_DISCOVERY_SECONDS = 180
# A fixed address in the Service range, so the host reaches it without a lookup (kube-proxy routes
# the host's own connections to Service addresses too).
PROMETHEUS_CLUSTER_IP = "10.96.0.90"
# What the Prometheus Operator puts on the pods of a Prometheus resource.
PROMETHEUS_POD_SELECTOR = {"operator.prometheus.io/name": PROMETHEUS_NAME}
# What a monitor without an interval gets (the e2e PodMonitors ask for it too): the host
# Prometheus' interval, so the autoscaler e2e sees the same delay on either path.
SCRAPE_INTERVAL = ScrapeSettings.scrape_interval
# Runs as nobody, like the upstream images; with seccomp and no privileges, PSA `restricted` admits it.
POD_SECURITY = {"runAsNonRoot": True, "runAsUser": NOBODY_UID, "runAsGroup": NOBODY_UID, "fsGroup": NOBODY_UID,
                "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                      "capabilities": {"drop": ["ALL"]}}


@dataclass(frozen=True)
class MonitoringImages:
    prometheus: str
    prometheus_release: str  # v3.16.0: spec.version, from which the operator picks Prometheus' flags
    operator: str
    config_reloader: str


def in_cluster_url() -> str:
    """Prometheus' HTTP API for pods (the autoscaler's prometheusUrl)."""
    return f"http://{PROMETHEUS_SERVICE}.{NAMESPACE}.svc.{network.CLUSTER_DOMAIN}:{PROMETHEUS_PORT}"


def host_url() -> str:
    """The same API for the host (tests, the demo)."""
    return f"http://{PROMETHEUS_CLUSTER_IP}:{PROMETHEUS_PORT}"


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader without YAML 1.1's `=` "value" tag, which PyYAML resolves but cannot construct: the
    CRDs list `=` among matcher operators, a plain string to every YAML 1.2 reader (kubectl's too)."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:value"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def crds(operator_bin: Path) -> list[dict]:
    """The monitoring.coreos.com CRDs of the Prometheus Operator release that was built."""
    return [yaml.load(path.read_text(), Loader=_Yaml12Loader)  # noqa: S506 - a SafeLoader subclass
            for path in sorted((operator_bin / "crds").glob("*.yaml"))]


def _upstream_cluster_role(operator_bin: Path, file_name: str, name: str) -> dict:
    role = yaml.safe_load((operator_bin / "rbac" / file_name).read_text())
    return {"apiVersion": role["apiVersion"], "kind": "ClusterRole", "metadata": {"name": name}, "rules": role["rules"]}


def _bound_service_account(name: str, cluster_role: dict) -> list[dict]:
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": NAMESPACE}},
        cluster_role,
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": cluster_role["metadata"]["name"]},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": cluster_role["metadata"]["name"]},
         "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}]},
    ]


def namespace() -> dict:
    restricted = {f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "warn", "audit")}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE, "labels": restricted}}


def operator_manifests(operator_bin: Path, image_refs: MonitoringImages) -> list[dict]:
    """The Prometheus Operator: its ServiceAccount, the upstream ClusterRole, and its Deployment."""
    labels = {"app.kubernetes.io/name": OPERATOR_NAME}
    role = _upstream_cluster_role(operator_bin, "prometheus-operator-cluster-role.yaml", "local-prometheus-operator")
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": OPERATOR_NAME, "namespace": NAMESPACE, "labels": labels},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {
            "metadata": {"labels": labels},
            "spec": {
                "serviceAccountName": OPERATOR_NAME,
                "securityContext": POD_SECURITY,
                "containers": [{
                    "name": OPERATOR_NAME, "image": image_refs.operator, "imagePullPolicy": "IfNotPresent",
                    "args": [f"--prometheus-config-reloader={image_refs.config_reloader}",
                             f"--prometheus-default-base-image={image_refs.prometheus.rpartition(':')[0]}",
                             "--log-level=info"],
                    "env": [{"name": "GOGC", "value": "30"}],
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "resources": {"requests": {"cpu": "20m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
                    "securityContext": CONTAINER_SECURITY,
                }],
            },
        }},
    }
    return [*_bound_service_account(OPERATOR_NAME, role), deployment]


def prometheus_manifests(operator_bin: Path, image_refs: MonitoringImages) -> list[dict]:
    """One Prometheus that selects every monitor and rule in every namespace, and its Service."""
    role = _upstream_cluster_role(operator_bin, "prometheus-cluster-role.yaml", "local-prometheus-server")
    everything: dict = {}
    prometheus = {
        "apiVersion": "monitoring.coreos.com/v1", "kind": "Prometheus",
        "metadata": {"name": PROMETHEUS_NAME, "namespace": NAMESPACE},
        "spec": {
            "image": image_refs.prometheus, "version": image_refs.prometheus_release, "replicas": 1,
            "serviceAccountName": PROMETHEUS_SERVICE,
            "scrapeInterval": SCRAPE_INTERVAL, "scrapeTimeout": SCRAPE_INTERVAL, "evaluationInterval": SCRAPE_INTERVAL,
            "retention": "2h",
            **{selector: everything for selector in (
                "podMonitorSelector", "podMonitorNamespaceSelector", "serviceMonitorSelector",
                "serviceMonitorNamespaceSelector", "ruleSelector", "ruleNamespaceSelector")},
            "securityContext": POD_SECURITY,
            "resources": {"requests": {"cpu": "50m", "memory": "200Mi"}, "limits": {"memory": "1Gi"}},
            # Merged into the Operator's own container of that name (strategic merge: the args
            # list is replaced as a whole).
            "containers": [{"name": "config-reloader", "args": list(RELOADER_ARGS)}],
        },
    }
    service = {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": PROMETHEUS_SERVICE, "namespace": NAMESPACE},
        "spec": {"clusterIP": PROMETHEUS_CLUSTER_IP, "selector": PROMETHEUS_POD_SELECTOR,
                 "ports": [{"name": "web", "port": PROMETHEUS_PORT, "targetPort": "web"}]},
    }
    return [*_bound_service_account(PROMETHEUS_SERVICE, role), prometheus, service]
