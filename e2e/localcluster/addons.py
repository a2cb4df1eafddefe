"""Cluster add-ons: CoreDNS as a pod behind the kube-dns Service, RBAC for the node's host
processes (kube-router's NetworkPolicy controller), rendered as plain manifests."""

from __future__ import annotations

from . import network

DNS_NAMESPACE = "kube-system"
DNS_NAME = "coredns"
# Not 53: the server runs as a non-root user without capabilities; the Service maps 53 to it.
DNS_CONTAINER_PORT = 1053
DNS_READY_PORT = 8181
DNS_HEALTH_PORT = 8080


def corefile() -> str:
    """Answers cluster names only: pods have no resolver outside this machine to forward to."""
    return f"""\
.:{DNS_CONTAINER_PORT} {{
    errors
    health :{DNS_HEALTH_PORT}
    ready :{DNS_READY_PORT}
    kubernetes {network.CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }}
    cache 5
    loop
}}
"""


def coredns_manifests(image: str) -> list[dict]:
    labels = {"k8s-app": "kube-dns"}
    meta = {"name": DNS_NAME, "namespace": DNS_NAMESPACE}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "system:coredns"},
         "rules": [
             {"apiGroups": [""], "resources": ["services", "pods", "namespaces"], "verbs": ["list", "watch"]},
             {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
         ]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "system:coredns"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:coredns"},
         "subjects": [{"kind": "ServiceAccount", "name": DNS_NAME, "namespace": DNS_NAMESPACE}]},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"Corefile": corefile()}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {**meta, "labels": labels},
         "spec": {
             "replicas": 1, "selector": {"matchLabels": labels},
             "template": {"metadata": {"labels": labels}, "spec": {
                 "serviceAccountName": DNS_NAME,
                 "priorityClassName": "system-cluster-critical",
                 "dnsPolicy": "Default",
                 "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
                                     "seccompProfile": {"type": "RuntimeDefault"}},
                 "containers": [{
                     "name": "coredns", "image": image, "args": ["-conf", "/etc/coredns/Corefile"],
                     "ports": [{"name": "dns", "containerPort": DNS_CONTAINER_PORT, "protocol": "UDP"},
                               {"name": "dns-tcp", "containerPort": DNS_CONTAINER_PORT, "protocol": "TCP"}],
                     "resources": {"requests": {"cpu": "50m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}},
                     "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                         "capabilities": {"drop": ["ALL"]}},
                     "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns", "readOnly": True}],
                     "readinessProbe": {"httpGet": {"path": "/ready", "port": DNS_READY_PORT}, "periodSeconds": 2},
                     "livenessProbe": {"httpGet": {"path": "/health", "port": DNS_HEALTH_PORT},
                                       "periodSeconds": 10, "failureThreshold": 5},
                 }],
                 "volumes": [{"name": "config", "configMap": {"name": DNS_NAME}}],
             }},
         }},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "kube-dns", "namespace": DNS_NAMESPACE, "labels": labels},
         "spec": {"selector": labels, "clusterIP": network.DNS_SERVICE_IP, "ports": [
             {"name": "dns", "port": 53, "targetPort": DNS_CONTAINER_PORT, "protocol": "UDP"},
             {"name": "dns-tcp", "port": 53, "targetPort": DNS_CONTAINER_PORT, "protocol": "TCP"},
         ]}},
    ]


KUBE_ROUTER_USER = "system:kube-router"
# The host Prometheus' identity: its Kubernetes discovery lists and watches pods, nothing else.
PROMETHEUS_USER = "pixtral-local-prometheus"


def kube_router_rbac() -> list[dict]:
    """What kube-router's NetworkPolicy controller reads (it runs on the node as a host process)."""
    return [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "kube-router"},
         "rules": [
             {"apiGroups": [""], "resources": ["namespaces", "pods", "services", "nodes", "endpoints"],
              "verbs": ["get", "list", "watch"]},
             {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": ["get", "list", "watch"]},
             {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]},
             {"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch"]},
         ]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "kube-router"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "kube-router"},
         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": KUBE_ROUTER_USER}]},
    ]


def prometheus_rbac() -> list[dict]:
    """What the host Prometheus' `kubernetes_sd_configs` role pod reads."""
    return [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "local-prometheus"},
         "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "local-prometheus"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "local-prometheus"},
         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": PROMETHEUS_USER}]},
    ]


def kubelet_api_rbac(user: str) -> list[dict]:
    """The API server's own identity may use the kubelet API (logs, exec, port-forward)."""
    return [{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
             "metadata": {"name": "kube-apiserver-kubelet-client"},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                         "name": "system:kubelet-api-admin"},
             "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]}]


def kube_router_command(binary: str, kubeconfig: str, node_name: str, health_port: int) -> list[str]:
    # Firewall only: pods are wired by the CNI bridge and Services by kube-proxy. No metrics port.
    return [binary, f"--kubeconfig={kubeconfig}", "--run-firewall=true", "--run-router=false",
            "--run-service-proxy=false", "--run-loadbalancer=false", "--enable-cni=false",
            f"--hostname-override={node_name}", f"--health-port={health_port}", "--metrics-port=0", "--v=1"]
