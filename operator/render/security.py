"""The securityContext every pod the operator renders runs with: admissible in a namespace labelled
`pod-security.kubernetes.io/enforce: restricted` (runAsNonRoot, seccomp RuntimeDefault, no
privilege escalation, every capability dropped) and with a read-only root filesystem, so each
container writes only to the emptyDirs its pod mounts."""

from __future__ import annotations

from typing import Any

# The conventional "nonroot" uid/gid of distroless and of this project's images.
NONROOT_UID = 65532


def pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": NONROOT_UID,
        "runAsGroup": NONROOT_UID,
        # emptyDirs and Secret volumes belong to the pod's group. OnRootMismatch skips the recursive
        # ownership walk of a volume whose root already fits (a large weight claim).
        "fsGroup": NONROOT_UID,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": NONROOT_UID,
        "runAsGroup": NONROOT_UID,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
