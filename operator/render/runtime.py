"""Runtime pods: one Deployment and one Service per track."""

from __future__ import annotations

import json
import math
from typing import Any

from pixtral_operator.render import labels as L
from pixtral_operator.render.internalkey import KEY as INTERNAL_KEY
from pixtral_operator.render.policy import pod_scrape_annotations
from pixtral_operator.render.security import container_security_context, pod_security_context
from pixtral_operator.render.tracing import runtime_tracing_env
from pixtral_operator.settings import OperatorSettings
from pixtral_operator.spec import MODEL_MOUNT_PATH, PixtralSpec, TrackSpec
from pixtral_operator.validation import QUANTITY

# A 12B model with a vision encoder loads for minutes (download + weights + CUDA graphs):
# the startup probe allows up to 30 minutes before liveness takes over.
STARTUP_PERIOD_SECONDS = 10
STARTUP_FAILURE_THRESHOLD = 180
DRAIN_MARGIN_SECONDS = 15

# The root filesystem is read-only, so everything vLLM, torch, Triton and the Hugging Face hub write
# goes to the pod's own emptyDirs: HOME (~/.cache, ~/.config, ~/.triton) and the named caches on
# `cache`, tempfiles and the engine's IPC sockets on `tmp`. HOME must be set: the image's own home
# (/home/nonroot, or /root in vLLM's base image) is part of the read-only root.
CACHE_DIR = "/cache"
TMP_DIR = "/tmp"
CACHE_ENV = (
    ("HOME", CACHE_DIR),
    ("TMPDIR", TMP_DIR),
    ("HF_HOME", f"{CACHE_DIR}/huggingface"),
    ("VLLM_CACHE_ROOT", f"{CACHE_DIR}/vllm"),
    ("TORCHINDUCTOR_CACHE_DIR", f"{CACHE_DIR}/torchinductor"),
)


def grace_period_seconds(spec: PixtralSpec) -> int:
    """Long enough to drain the longest allowed request, plus time to stop vLLM."""
    return spec.router.request_timeout_seconds + 2 * DRAIN_MARGIN_SECONDS


# vLLM's multimodal processor cache: at most MM_CACHE_MEMORY_SHARE of the pod's memory, and never
# above vLLM's own default of 4 GiB (docs/runtime.md, "Caches"). One copy: with vLLM's "lru" cache
# type the engine core holds the processed images and the API server only their sizes.
MM_CACHE_MEMORY_SHARE = 1 / 8
MM_CACHE_MAX_GIB = 4.0
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"": 1, "n": 1e-9, "u": 1e-6, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}


def quantity_bytes(quantity: str) -> float:
    """A Kubernetes memory quantity ("48Gi", "64G", "1e9") in bytes."""
    match = QUANTITY.match(str(quantity))
    if not match:
        raise ValueError(f"not a Kubernetes quantity: {quantity!r}")
    suffix = match.group("suffix") or ""
    number = float(match.group("number"))
    if suffix in _BINARY:
        return number * _BINARY[suffix]
    if suffix in _DECIMAL:
        return number * _DECIMAL[suffix]
    return float(match.group("number") + suffix)  # an exponent: 1e9


def mm_processor_cache_gib(memory: str) -> float:
    """The multimodal processor cache for a pod of `memory`, in GiB rounded down to 1/16."""
    gib = quantity_bytes(memory) / 2**30 * MM_CACHE_MEMORY_SHARE
    return min(MM_CACHE_MAX_GIB, math.floor(gib * 16) / 16)


def _env(spec: PixtralSpec, track: TrackSpec) -> list[dict[str, Any]]:
    model = MODEL_MOUNT_PATH if track.source.is_local else track.model_name
    env: list[dict[str, Any]] = [
        {"name": "PIXTRAL_MODEL", "value": model},
        {"name": "PIXTRAL_SERVED_MODEL_NAME", "value": spec.served_model_name},
        {"name": "PIXTRAL_TENSOR_PARALLEL_SIZE", "value": str(track.tensor_parallel_size)},
        {"name": "PIXTRAL_IMAGES_PER_PROMPT", "value": str(track.images_per_prompt)},
        {"name": "PIXTRAL_MAX_MODEL_LEN", "value": str(track.max_model_len)},
        {"name": "PIXTRAL_GPU_MEMORY_UTILIZATION", "value": str(track.gpu_memory_utilization)},
        {"name": "PIXTRAL_MAX_NUM_SEQS", "value": str(track.max_num_seqs)},
        {"name": "PIXTRAL_MM_PROCESSOR_CACHE_GB", "value": f"{mm_processor_cache_gib(spec.memory):g}"},
        {"name": "PIXTRAL_EXTRA_ARGS", "value": json.dumps(list(track.extra_args))},
        {"name": "PIXTRAL_HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "PIXTRAL_VLLM_PORT", "value": str(L.RUNTIME_HTTP_PORT)},
        {"name": "PIXTRAL_HEALTH_PORT", "value": str(L.RUNTIME_HEALTH_PORT)},
        {"name": "PIXTRAL_DRAIN_TIMEOUT_SECONDS", "value": str(grace_period_seconds(spec) - DRAIN_MARGIN_SECONDS)},
    ]
    # vLLM reads its API key from this variable (no flag: the key stays off the command line), and
    # then refuses /v1 calls without it; /health and /metrics stay open (docs/runtime.md).
    env.append(
        {"name": "VLLM_API_KEY",
         "valueFrom": {"secretKeyRef": {"name": L.internal_key_name(spec.name), "key": INTERNAL_KEY}}}
    )
    if track.revision:
        env.append({"name": "PIXTRAL_MODEL_REVISION", "value": track.revision})
    if track.source.hub_token_secret:
        env.append(
            {
                "name": "HF_TOKEN",
                "valueFrom": {
                    "secretKeyRef": {"name": track.source.hub_token_secret, "key": track.source.hub_token_key}
                },
            }
        )
    env += [{"name": name, "value": value} for name, value in CACHE_ENV]
    env += runtime_tracing_env(spec, track)
    managed = {e["name"] for e in env}
    env.extend(dict(e) for e in track.env if e.get("name") not in managed)
    return env


def _volumes(track: TrackSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes: list[dict[str, Any]] = [
        # vLLM's tensor-parallel workers exchange tensors through shared memory.
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}},
        {"name": "cache", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "cache", "mountPath": CACHE_DIR},
        {"name": "tmp", "mountPath": TMP_DIR},
    ]
    source = track.source
    if source.host_path:
        # Refused in a namespace that enforces the `restricted` (or `baseline`) Pod Security level;
        # `pvc` works everywhere (docs/runtime.md).
        volumes.append({"name": "model", "hostPath": {"path": source.host_path, "type": "Directory"}})
        mounts.append({"name": "model", "mountPath": MODEL_MOUNT_PATH, "readOnly": True})
    elif source.pvc_claim:
        volumes.append({"name": "model", "persistentVolumeClaim": {"claimName": source.pvc_claim, "readOnly": True}})
        mount = {"name": "model", "mountPath": MODEL_MOUNT_PATH, "readOnly": True}
        if source.pvc_sub_path:
            mount["subPath"] = source.pvc_sub_path
        mounts.append(mount)
    return volumes, mounts


def track_deployment(spec: PixtralSpec, track: TrackSpec, settings: OperatorSettings, replicas: int) -> dict[str, Any]:
    name = L.track_deployment_name(spec.name, track.track)
    pod_labels = L.runtime_labels(spec.name, track.track)
    volumes, mounts = _volumes(track)
    gpus = str(track.tensor_parallel_size)
    # No CPU limit: a CFS quota throttles vLLM's scheduler, tokenizer and image preprocessing threads
    # in bursts and shows up as latency; the request still reserves the CPUs. Memory and GPUs are
    # limited (a memory overrun is an OOM kill of this pod, not of its neighbours).
    resources = {
        "requests": {"cpu": spec.cpu, "memory": spec.memory, "nvidia.com/gpu": gpus},
        "limits": {"memory": spec.memory, "nvidia.com/gpu": gpus},
    }
    container = {
        "name": "runtime",
        "image": track.image or settings.runtime_image,
        "command": ["pixtral-runtime", "serve"],
        "env": _env(spec, track),
        "ports": [
            {"name": "http", "containerPort": L.RUNTIME_HTTP_PORT, "protocol": "TCP"},
            {"name": "health", "containerPort": L.RUNTIME_HEALTH_PORT, "protocol": "TCP"},
        ],
        "resources": resources,
        "volumeMounts": mounts,
        "startupProbe": {
            "httpGet": {"path": "/readyz", "port": "health"},
            "periodSeconds": STARTUP_PERIOD_SECONDS,
            "failureThreshold": STARTUP_FAILURE_THRESHOLD,
            "timeoutSeconds": 5,
        },
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "health"},
            "periodSeconds": 2,
            "failureThreshold": 2,
            "timeoutSeconds": 5,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "health"},
            "periodSeconds": 10,
            "failureThreshold": 3,
            "timeoutSeconds": 5,
        },
        "securityContext": container_security_context(),
    }
    node_selector = dict(spec.scheduling.node_selector)
    if spec.gpu_product:
        node_selector["nvidia.com/gpu.product"] = spec.gpu_product
    tolerations = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    tolerations += [dict(t) for t in spec.scheduling.tolerations]
    pod_spec: dict[str, Any] = {
        "securityContext": pod_security_context(),
        # The engine never talks to the Kubernetes API: no token in the pod.
        "automountServiceAccountToken": False,
        "containers": [container],
        "volumes": volumes,
        "terminationGracePeriodSeconds": grace_period_seconds(spec),
        "tolerations": tolerations,
        "enableServiceLinks": False,
    }
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    if spec.scheduling.affinity:
        pod_spec["affinity"] = spec.scheduling.affinity
    if spec.scheduling.priority_class_name:
        pod_spec["priorityClassName"] = spec.scheduling.priority_class_name
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": spec.namespace, "labels": pod_labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": L.runtime_selector(spec.name, track.track)},
            # GPUs are scarce: surge one pod at a time and never take a serving pod down first.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": pod_scrape_annotations(settings, L.RUNTIME_HTTP_PORT),
                },
                "spec": pod_spec,
            },
        },
    }


def track_service(spec: PixtralSpec, track: TrackSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": L.track_service_name(spec.name, track.track),
            "namespace": spec.namespace,
            "labels": L.runtime_labels(spec.name, track.track),
        },
        "spec": {
            "selector": L.runtime_selector(spec.name, track.track),
            "ports": [{"name": "http", "port": L.RUNTIME_HTTP_PORT, "targetPort": "http", "protocol": "TCP"}],
            # The router balances over pod IPs itself, so the ClusterIP is only a convenience.
            "publishNotReadyAddresses": False,
        },
    }
