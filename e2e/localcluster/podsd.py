"""Kubernetes pod service discovery for Prometheus, served over http_sd (pure rendering).

Debian's Prometheus 2.42 is built without kubernetes_sd_configs, so e2e/podsd.py serves the
same target groups that `kubernetes_sd_configs: [{role: pod}]` would produce, with the same
`__meta_kubernetes_*` labels, from the API's pod list; the relabeling rules stay the standard ones.
"""

from __future__ import annotations


def sanitize(name: str) -> str:
    """Prometheus' label-name sanitising: every character outside [a-zA-Z0-9_] becomes '_'."""
    return "".join(c if (c.isascii() and c.isalnum()) or c == "_" else "_" for c in name)


def _pod_labels(pod: dict) -> dict[str, str]:
    meta, spec, status = pod["metadata"], pod.get("spec", {}), pod.get("status", {})
    ready = next((c["status"] for c in status.get("conditions", []) if c["type"] == "Ready"), "unknown")
    labels = {
        "__meta_kubernetes_namespace": meta.get("namespace", ""),
        "__meta_kubernetes_pod_name": meta.get("name", ""),
        "__meta_kubernetes_pod_ip": status.get("podIP", ""),
        "__meta_kubernetes_pod_ready": ready.lower(),
        "__meta_kubernetes_pod_phase": status.get("phase", ""),
        "__meta_kubernetes_pod_node_name": spec.get("nodeName", ""),
        "__meta_kubernetes_pod_host_ip": status.get("hostIP", ""),
        "__meta_kubernetes_pod_uid": meta.get("uid", ""),
    }
    controller = next((o for o in meta.get("ownerReferences", []) if o.get("controller")), None)
    if controller:
        labels["__meta_kubernetes_pod_controller_kind"] = controller["kind"]
        labels["__meta_kubernetes_pod_controller_name"] = controller["name"]
    for key, value in (meta.get("labels") or {}).items():
        labels[f"__meta_kubernetes_pod_label_{sanitize(key)}"] = value
        labels[f"__meta_kubernetes_pod_labelpresent_{sanitize(key)}"] = "true"
    for key, value in (meta.get("annotations") or {}).items():
        labels[f"__meta_kubernetes_pod_annotation_{sanitize(key)}"] = value
        labels[f"__meta_kubernetes_pod_annotationpresent_{sanitize(key)}"] = "true"
    return labels


def target_groups(pods: list[dict]) -> list[dict]:
    """One target per declared container port, or one port-less target for a container without
    ports, for every pod with an IP (as kubernetes_sd role pod does)."""
    groups = []
    for pod in sorted(pods, key=lambda p: (p["metadata"].get("namespace", ""), p["metadata"]["name"])):
        ip = pod.get("status", {}).get("podIP")
        if not ip:
            continue
        base = _pod_labels(pod)
        for container in pod.get("spec", {}).get("containers", []):
            ports = container.get("ports") or []
            container_labels = {**base, "__meta_kubernetes_pod_container_name": container["name"],
                                "__meta_kubernetes_pod_container_image": container.get("image", ""),
                                "__meta_kubernetes_pod_container_init": "false"}
            if not ports:
                groups.append({"targets": [ip], "labels": container_labels})
            for port in ports:
                groups.append({"targets": [f"{ip}:{port['containerPort']}"], "labels": {
                    **container_labels,
                    "__meta_kubernetes_pod_container_port_name": port.get("name", ""),
                    "__meta_kubernetes_pod_container_port_number": str(port["containerPort"]),
                    "__meta_kubernetes_pod_container_port_protocol": port.get("protocol", "TCP"),
                }})
    return groups
