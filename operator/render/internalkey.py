"""The internal API key: vLLM of every runtime pod requires it on /v1, and only the router sends it,
so a call that reaches vLLM's port past the NetworkPolicy (a cluster without an enforcer) is refused
by vLLM itself (docs/architecture.md, "Isolation").

The Secret is created once with a random token and never applied again: it is not one of the
rendered children (`desired_children`), so neither drift repair nor a spec change rewrites or
rotates it. Deleted by hand, it is created anew with a new token; the router reads the new one
from its volume, the runtime pods take it when they restart (docs/runtime.md)."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

from pixtral_operator.render import labels as L

# The Secret's data key: the router mounts the file, runtime pods read it as VLLM_API_KEY.
KEY = "key"
TOKEN_BYTES = 32


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def internal_key_secret(name: str, namespace: str, owner: Mapping[str, Any], token: str) -> dict[str, Any]:
    """Pure: the Secret, owned by the PixtralDeployment (garbage-collected with it)."""
    if not token:
        raise ValueError("the internal API key must not be empty: vLLM would then require no key")
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": L.internal_key_name(name),
            "namespace": namespace,
            "labels": L.common_labels(name, "runtime"),
            "ownerReferences": [L.owner_reference(owner)],
        },
        "stringData": {KEY: token},
    }
