"""Pure decisions of the node agent: what a pod spec means for a local process.

Nothing here performs I/O; lookups of ConfigMaps and Secrets are injected.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

# The projected service-account volume is mounted here in every container that has one.
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"

DEFAULT_RUNNABLE_IMAGES = r"pixtral|(^|/)(python|busybox|alpine|debian|ubuntu|bash)$"


class SpecError(Exception):
    """The pod spec asks for something the agent cannot provide (reported in container status)."""

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(message)


def image_repository(image: str) -> str:
    """'reg:5000/team/pixtral-runtime:v1@sha256:..' -> 'reg:5000/team/pixtral-runtime'."""
    name = image.split("@", 1)[0]
    last_slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > last_slash else name


def image_runnable(image: str, runnable_pattern: str) -> bool:
    return re.search(runnable_pattern, image_repository(image)) is not None


_VAR_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.\-]*)\)")


def expand_references(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined variables are substituted, $$ escapes a $."""
    def replace(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env[name] if name in env else match.group(0)
    return _VAR_REFERENCE.sub(replace, text)


_FIELD_SUBSCRIPT = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


def field_ref_value(pod: dict, field_path: str, pod_ip: str, host_ip: str) -> str:
    meta, spec = pod.get("metadata", {}), pod.get("spec", {})
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
    }
    if field_path in simple:
        return simple[field_path]
    subscript = _FIELD_SUBSCRIPT.match(field_path)
    if subscript:
        return str(meta.get(subscript.group(1), {}).get(subscript.group(2), ""))
    if field_path in ("metadata.labels", "metadata.annotations"):
        values = meta.get(field_path.split(".")[1], {})
        return "\n".join(f'{k}="{v}"' for k, v in sorted(values.items()))
    raise SpecError("CreateContainerConfigError", f"unsupported fieldRef fieldPath {field_path!r}")


_QUANTITY = re.compile(r"^([0-9.]+)([a-zA-Z]*)$")
_SUFFIX = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20,
           "Gi": 2**30, "Ti": 2**40}


def parse_quantity(text: str) -> float:
    match = _QUANTITY.match(str(text).strip())
    if not match or match.group(2) not in _SUFFIX:
        raise SpecError("CreateContainerConfigError", f"cannot parse quantity {text!r}")
    return float(match.group(1)) * _SUFFIX[match.group(2)]


def resource_field_value(container: dict, resource: str, divisor: str | None) -> str:
    kind, _, name = resource.partition(".")
    value = container.get("resources", {}).get(kind, {}).get(name)
    if value is None:
        return "0"
    amount = parse_quantity(value) / parse_quantity(divisor or "1")
    return str(int(-(-amount // 1)))  # Kubernetes rounds up


Lookup = Callable[[str], "dict[str, str] | None"]


def _ref_value(kind: str, ref: dict, lookup: Lookup) -> str | None:
    data = lookup(ref["name"])
    optional = bool(ref.get("optional"))
    if data is None:
        if optional:
            return None
        raise SpecError("CreateContainerConfigError", f'{kind} "{ref["name"]}" not found')
    if ref["key"] not in data:
        if optional:
            return None
        raise SpecError("CreateContainerConfigError",
                        f'couldn\'t find key {ref["key"]} in {kind} {ref["name"]}')
    return _text(data[ref["key"]])


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


def container_env(container: dict, pod: dict, pod_ip: str, host_ip: str,
                  configmap: Lookup, secret: Lookup) -> dict[str, str]:
    """The container's own environment: envFrom first, then env (which may refer to earlier values)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        prefix = source.get("prefix", "")
        for kind, ref_key, lookup in (("ConfigMap", "configMapRef", configmap), ("Secret", "secretRef", secret)):
            ref = source.get(ref_key)
            if ref is None:
                continue
            data = lookup(ref["name"])
            if data is None:
                if ref.get("optional"):
                    continue
                raise SpecError("CreateContainerConfigError", f'{kind} "{ref["name"]}" not found')
            env.update({prefix + key: _text(value) for key, value in data.items()})
    for item in container.get("env", []):
        name = item["name"]
        if "valueFrom" not in item:
            env[name] = expand_references(item.get("value", ""), env)
            continue
        source = item["valueFrom"]
        if "fieldRef" in source:
            value = field_ref_value(pod, source["fieldRef"]["fieldPath"], pod_ip, host_ip)
        elif "secretKeyRef" in source:
            value = _ref_value("secret", source["secretKeyRef"], secret)
        elif "configMapKeyRef" in source:
            value = _ref_value("configmap", source["configMapKeyRef"], configmap)
        elif "resourceFieldRef" in source:
            ref = source["resourceFieldRef"]
            value = resource_field_value(container, ref["resource"], ref.get("divisor"))
        else:
            raise SpecError("CreateContainerConfigError", f"unsupported valueFrom for env {name}: {sorted(source)}")
        if value is not None:
            env[name] = value
    return env


@dataclass(frozen=True)
class PathMapping:
    mount_path: str   # as the container sees it
    local_path: str   # where the process finds it


def path_mappings(container_root: str, container: dict) -> list[PathMapping]:
    """Every volume mount of the container, longest mount path first (the most specific wins)."""
    mounts = sorted({m["mountPath"].rstrip("/") or "/" for m in container.get("volumeMounts", [])},
                    key=len, reverse=True)
    return [PathMapping(m, container_root.rstrip("/") + m) for m in mounts if m != "/"]


def rewrite_paths(text: str, mappings: list[PathMapping]) -> str:
    """Replaces container mount paths that appear as whole path prefixes in a string.

    '/models/pixtral' and '--model=/models/pixtral/x' are rewritten; '/models/pixtral2' and
    'a/models/pixtral' are not.
    """
    if not mappings:
        return text
    pattern = re.compile(
        r"(?<![\w./-])(" + "|".join(re.escape(m.mount_path) for m in mappings) + r")(?=$|[/\s:;,=\"'])")
    by_mount = {m.mount_path: m.local_path for m in mappings}
    return pattern.sub(lambda match: by_mount[match.group(1)], text)


@dataclass(frozen=True)
class Probe:
    kind: str                 # httpGet | tcpSocket | exec | grpc
    handler: dict
    initial_delay: float = 0
    period: float = 10
    timeout: float = 1
    success_threshold: int = 1
    failure_threshold: int = 3


def parse_probe(spec: dict | None) -> Probe | None:
    if not spec:
        return None
    for kind in ("httpGet", "tcpSocket", "exec", "grpc"):
        if kind in spec:
            return Probe(kind, spec[kind], float(spec.get("initialDelaySeconds", 0)),
                         float(spec.get("periodSeconds", 10)), float(spec.get("timeoutSeconds", 1)),
                         int(spec.get("successThreshold", 1)), int(spec.get("failureThreshold", 3)))
    raise SpecError("CreateContainerConfigError", f"probe without a handler: {sorted(spec)}")


def resolve_port(port: int | str, container: dict) -> int:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for declared in container.get("ports", []):
        if declared.get("name") == port:
            return int(declared["containerPort"])
    raise SpecError("CreateContainerConfigError", f"probe port {port!r} is not a named port of the container")


def termination_grace_seconds(pod: dict) -> float:
    meta_grace = pod.get("metadata", {}).get("deletionGracePeriodSeconds")
    if meta_grace is not None:
        return float(meta_grace)
    return float(pod.get("spec", {}).get("terminationGracePeriodSeconds", 30))


def should_restart(restart_policy: str, exit_code: int) -> bool:
    if restart_policy == "Always":
        return True
    if restart_policy == "OnFailure":
        return exit_code != 0
    return False


def restart_delay(consecutive_failures: int, base: float, cap: float) -> float:
    """Exponential back-off before the n-th restart in a row (0 for the first)."""
    if consecutive_failures <= 1:
        return 0.0
    return min(cap, base * 2 ** (consecutive_failures - 2))


def pod_phase(restart_policy: str, init_pending: bool, init_failed: bool, states: list[str | int]) -> str:
    """The pod phase, as the kubelet derives it.

    states holds one entry per app container: "running", "waiting" (never started), "restarting"
    (waiting after an exit), or the exit code of a container that ended for good.
    """
    if init_failed:
        return "Failed"
    if init_pending or "waiting" in states:
        return "Pending"
    if "running" in states:
        return "Running"
    exits = [s for s in states if isinstance(s, int)]
    if "restarting" in states or not states:
        return "Running" if states else "Pending"
    if all(code == 0 for code in exits):
        return "Succeeded"
    return "Failed" if restart_policy == "Never" else "Running"


@dataclass(frozen=True)
class NodeSpec:
    name: str
    gpus: int
    gpu_product: str
    cpu: str = "32"
    memory: str = "256Gi"
    pods: int = 110
    extra_labels: dict = field(default_factory=dict)


def node_object(node: NodeSpec, kubelet_version: str, now: str, kubelet_port: int = 0) -> dict:
    resources = {"cpu": node.cpu, "memory": node.memory, "pods": str(node.pods),
                 "ephemeral-storage": "100Gi", "nvidia.com/gpu": str(node.gpus)}
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": node.name,
            "labels": {
                "kubernetes.io/hostname": node.name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                "nvidia.com/gpu.present": "true", "nvidia.com/gpu.product": node.gpu_product,
                "nvidia.com/gpu.count": str(node.gpus), "serving.pixtral.dev/local-node": "true",
                **node.extra_labels,
            },
        },
        "spec": {},
        "status": {
            "capacity": resources, "allocatable": dict(resources),
            "conditions": node_conditions(now),
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": node.name}],
            "nodeInfo": {"kubeletVersion": kubelet_version, "operatingSystem": "linux", "architecture": "amd64",
                         "containerRuntimeVersion": "local-process://1", "kernelVersion": "",
                         "osImage": "local process agent (pods run as host processes)",
                         "machineID": "", "systemUUID": "", "bootID": "", "kubeProxyVersion": ""},
            "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
        },
    }


def node_conditions(now: str, since: str | None = None) -> list[dict]:
    """Healthy node conditions: heartbeat now, unchanged since the node was registered."""
    since = since or now
    healthy = [("MemoryPressure", "KubeletHasSufficientMemory"), ("DiskPressure", "KubeletHasNoDiskPressure"),
               ("PIDPressure", "KubeletHasSufficientPID")]
    conditions = [{"type": t, "status": "False", "reason": r, "message": "local process agent",
                   "lastHeartbeatTime": now, "lastTransitionTime": since} for t, r in healthy]
    conditions.append({"type": "Ready", "status": "True", "reason": "KubeletReady",
                       "message": "local process agent is posting ready status",
                       "lastHeartbeatTime": now, "lastTransitionTime": since})
    return conditions


def parse_log_request(path: str, query: dict[str, list[str]]) -> tuple[str, str, str, int | None, bool, int | None]:
    """/containerLogs/<ns>/<pod>/<container>?tailLines=&follow=&limitBytes= as the kubelet serves it.

    Returns (namespace, pod, container, tail_lines, follow, limit_bytes); raises ValueError.
    """
    parts = path.strip("/").split("/")
    if len(parts) != 4 or parts[0] != "containerLogs":
        raise ValueError(f"not a container log path: {path}")
    def number(name: str) -> int | None:
        values = query.get(name)
        if not values or values[0] == "":
            return None
        if not values[0].isdigit():
            raise ValueError(f"{name} must be a non-negative integer, got {values[0]!r}")
        return int(values[0])
    follow = (query.get("follow") or ["false"])[0].lower() in ("true", "1")
    return parts[1], parts[2], parts[3], number("tailLines"), follow, number("limitBytes")


def tail(content: bytes, lines: int | None, limit_bytes: int | None) -> bytes:
    """The last `lines` lines of content, then at most limit_bytes of it."""
    if lines is not None:
        kept = content.splitlines(keepends=True)
        content = b"".join(kept[-lines:]) if lines else b""
    if limit_bytes is not None:
        content = content[:limit_bytes]
    return content
