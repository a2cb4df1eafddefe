"""The tenant-facing router: ConfigMap with its settings, ServiceAccount + Role to watch them,
Deployment, and the Service tenants call (`<name>-router`)."""

from __future__ import annotations

import json
from typing import Any

from pixtral_operator.render import labels as L
from pixtral_operator.render.internalkey import KEY as INTERNAL_KEY
from pixtral_operator.render.policy import pod_scrape_annotations
from pixtral_operator.render.security import container_security_context, pod_security_context
from pixtral_operator.render.tracing import router_tracing
from pixtral_operator.settings import OperatorSettings
from pixtral_operator.spec import PixtralSpec, TenantLimits

CONFIG_KEY = "config.json"
# The API-key Secret is mounted here and the router reads the keys from its files, so neither the
# router nor the operator needs to read Secrets through the API (docs/router.md).
API_KEYS_DIR = "/etc/pixtral-router/api-keys"
# The internal key the router sends to vLLM (render/internalkey.py); a directory mount, not a subPath,
# so that the kubelet's updates of the Secret reach the file.
INTERNAL_KEY_DIR = "/etc/pixtral-router/internal-key"
# A terminating router pod keeps serving this long (preStop) while the endpoints drop it.
PRESTOP_SECONDS = 5
# After the graceful shutdown, time for the process to exit before SIGKILL.
SHUTDOWN_MARGIN_SECONDS = 5
MAX_GRACE_SECONDS = 3600


def _limits(limits: TenantLimits) -> dict[str, int]:
    out = {}
    if limits.requests_per_minute is not None:
        out["requestsPerMinute"] = limits.requests_per_minute
    if limits.max_concurrent is not None:
        out["maxConcurrent"] = limits.max_concurrent
    if limits.images_per_minute is not None:
        out["imagesPerMinute"] = limits.images_per_minute
    if limits.megapixels_per_minute is not None:
        out["megapixelsPerMinute"] = limits.megapixels_per_minute
    if limits.tokens_per_minute is not None:
        out["tokensPerMinute"] = limits.tokens_per_minute
    if limits.weight is not None:
        out["weight"] = limits.weight
    return out


def router_config(spec: PixtralSpec) -> dict[str, Any]:
    """The router's config.json (docs/settings.md)."""
    tracks = {
        t.track: {"service": L.track_service_name(spec.name, t.track), "port": L.RUNTIME_HTTP_PORT}
        for t in spec.tracks()
    }
    tenancy: dict[str, Any] = {
        "defaultLimits": _limits(spec.router.default_limits),
        "tenants": {name: _limits(limits) for name, limits in spec.router.tenants},
    }
    for name in spec.router.track_override_tenants:
        tenancy["tenants"][name]["trackOverride"] = True
    if spec.router.api_keys_secret:
        tenancy["apiKeysSecret"] = spec.router.api_keys_secret
    canary: dict[str, Any] = {"weight": spec.canary.weight if spec.canary else 0}
    if spec.canary and spec.canary.sticky_header:
        canary["stickyHeader"] = spec.canary.sticky_header
    return {
        "deployment": spec.name,
        "servedModelName": spec.served_model_name,
        "tracks": tracks,
        "canary": canary,
        "overrideHeader": L.TRACK_HEADER,
        "admission": {
            "imagesPerPrompt": spec.images_per_prompt,
            "maxImageBytes": spec.max_image_bytes,
            "maxImagePixels": spec.max_image_pixels,
            "allowedImageUrlSchemes": list(spec.router.allowed_image_url_schemes),
            "maxBodyBytes": spec.router.max_body_bytes,
        },
        "tenancy": tenancy,
        "routing": {"strategy": spec.router.routing_strategy, "epsilon": spec.router.routing_epsilon},
        # The router's field names are the CRD's; it reads 0 (off) where backendConcurrency is absent.
        "fairQueuing": {k: v for k, v in spec.router.fair_queuing.items()
                        if k in ("backendConcurrency", "maxQueuedPerTenant", "maxQueued", "maxWaitSeconds")},
        "tracing": router_tracing(spec),
        "requestTimeoutSeconds": spec.router.request_timeout_seconds,
        "pendingTimeoutSeconds": spec.router.pending_timeout_seconds,
        # Its ready endpoints are the replicas that share each tenant's limits (docs/router.md, "Limits").
        "routerService": router_service(spec)["metadata"]["name"],
    }


def router_configmap(spec: PixtralSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": L.router_name(spec.name),
            "namespace": spec.namespace,
            "labels": L.common_labels(spec.name, "router"),
        },
        "data": {CONFIG_KEY: json.dumps(router_config(spec), indent=2, sort_keys=True)},
    }


def router_service_account(spec: PixtralSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {
            "name": L.router_name(spec.name),
            "namespace": spec.namespace,
            "labels": L.common_labels(spec.name, "router"),
        },
        "automountServiceAccountToken": True,
    }


def router_role(spec: PixtralSpec) -> dict[str, Any]:
    """Least privilege: the router reads its own ConfigMap and the track EndpointSlices, nothing
    else; its API-key Secret comes as a volume."""
    rules: list[dict[str, Any]] = [
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]},
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": [L.router_name(spec.name)],
            "verbs": ["get", "list", "watch"],
        },
    ]
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {
            "name": L.router_name(spec.name),
            "namespace": spec.namespace,
            "labels": L.common_labels(spec.name, "router"),
        },
        "rules": rules,
    }


def router_role_binding(spec: PixtralSpec) -> dict[str, Any]:
    name = L.router_name(spec.name)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": name, "namespace": spec.namespace, "labels": L.common_labels(spec.name, "router")},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": spec.namespace}],
    }


def graceful_shutdown_seconds(spec: PixtralSpec) -> int:
    """How long the router's streams get to finish on SIGTERM: the longest allowed request, within
    the grace period's cap."""
    return min(spec.router.request_timeout_seconds, MAX_GRACE_SECONDS - PRESTOP_SECONDS - SHUTDOWN_MARGIN_SECONDS)


def router_deployment(spec: PixtralSpec, settings: OperatorSettings) -> dict[str, Any]:
    name = L.router_name(spec.name)
    graceful = graceful_shutdown_seconds(spec)
    labels = L.common_labels(spec.name, "router")
    container = {
        "name": "router",
        "image": spec.router.image or settings.router_image,
        # Explicit, so the container runs the router whatever the image's entrypoint: the slim router
        # image (ENTRYPOINT pixtral-runtime, CMD router) and the runtime image both have this command.
        "command": ["pixtral-runtime", "router"],
        "env": [
            {"name": "PIXTRAL_ROUTER_HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "PIXTRAL_ROUTER_PORT", "value": str(L.ROUTER_HTTP_PORT)},
            {"name": "PIXTRAL_ROUTER_METRICS_PORT", "value": str(L.ROUTER_METRICS_PORT)},
            # The body memory budget is a share of this (docs/router.md, "Memory").
            {"name": "PIXTRAL_ROUTER_MEMORY_LIMIT_BYTES",
             "valueFrom": {"resourceFieldRef": {"containerName": "router", "resource": "limits.memory"}}},
            {"name": "PIXTRAL_ROUTER_GRACEFUL_SHUTDOWN_SECONDS", "value": str(graceful)},
            {"name": "PIXTRAL_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "PIXTRAL_ROUTER_CONFIGMAP", "value": name},
        ],
        "ports": [{"name": "http", "containerPort": L.ROUTER_HTTP_PORT, "protocol": "TCP"},
                  {"name": "metrics", "containerPort": L.ROUTER_METRICS_PORT, "protocol": "TCP"}],
        "resources": {"requests": {"cpu": "500m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 2, "failureThreshold": 3},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10, "failureThreshold": 3},
        # Endpoints drop a terminating pod only after a moment (the EndpointSlice controller, then
        # every kube-proxy): the router keeps serving through it, then drains on SIGTERM.
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SECONDS}}},
        "securityContext": container_security_context(),
        # The router writes no files; the Kubernetes client and Python get a scratch /tmp all the same.
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    volumes: list[dict[str, Any]] = [
        {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
        {"name": "internal-key",
         "secret": {"secretName": L.internal_key_name(spec.name), "defaultMode": 0o440,
                    "items": [{"key": INTERNAL_KEY, "path": INTERNAL_KEY}]}},
    ]
    container["env"].append({"name": "PIXTRAL_ROUTER_INTERNAL_KEY_FILE", "value": f"{INTERNAL_KEY_DIR}/{INTERNAL_KEY}"})
    container["volumeMounts"].append({"name": "internal-key", "mountPath": INTERNAL_KEY_DIR, "readOnly": True})
    if spec.router.api_keys_secret:
        container["env"].append({"name": "PIXTRAL_ROUTER_API_KEYS_DIR", "value": API_KEYS_DIR})
        container["volumeMounts"].append({"name": "api-keys", "mountPath": API_KEYS_DIR, "readOnly": True})
        # Readable by the pod's group (fsGroup) only. Not optional: without the Secret the pod waits
        # instead of serving (the operator reports SecretNotFound before it renders anything).
        volumes.append({"name": "api-keys", "secret": {"secretName": spec.router.api_keys_secret, "defaultMode": 0o440}})
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": spec.namespace, "labels": labels},
        "spec": {
            "replicas": spec.router.replicas,
            "selector": {"matchLabels": L.router_selector(spec.name)},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": pod_scrape_annotations(settings, L.ROUTER_METRICS_PORT),
                },
                "spec": {
                    "securityContext": pod_security_context(),
                    "serviceAccountName": name,
                    # The router watches its ConfigMap and EndpointSlices with this token.
                    "automountServiceAccountToken": True,
                    "containers": [container],
                    "volumes": volumes,
                    # preStop, then uvicorn's graceful shutdown (streams in flight finish), then a margin.
                    "terminationGracePeriodSeconds": PRESTOP_SECONDS + graceful + SHUTDOWN_MARGIN_SECONDS,
                    "enableServiceLinks": False,
                },
            },
        },
    }


def router_service(spec: PixtralSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": L.router_name(spec.name), "namespace": spec.namespace, "labels": L.common_labels(spec.name, "router")},
        "spec": {
            "selector": L.router_selector(spec.name),
            "ports": [{"name": "http", "port": L.ROUTER_SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def endpoint_url(spec: PixtralSpec, settings: OperatorSettings) -> str:
    return f"http://{L.router_name(spec.name)}.{spec.namespace}.{settings.cluster_domain}:{L.ROUTER_SERVICE_PORT}/v1"
