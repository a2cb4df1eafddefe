"""Pure renderers: PixtralSpec -> the dicts of every child object."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from pixtral_operator.jsontree import copy_tree
from pixtral_operator.render import labels as L
from pixtral_operator.render.policy import runtime_network_policy, runtime_pdb, workload_monitor
from pixtral_operator.render.router import (
    router_configmap,
    router_deployment,
    router_role,
    router_role_binding,
    router_service,
    router_service_account,
)
from pixtral_operator.render.runtime import track_deployment, track_service
from pixtral_operator.settings import OperatorSettings
from pixtral_operator.spec import TRACKS, PixtralSpec


def spec_hash(obj: Mapping[str, Any]) -> str:
    """Hash of what the operator manages in an object; equal hashes mean nothing to write."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def _finish(obj: dict[str, Any], owner: Mapping[str, Any]) -> dict[str, Any]:
    obj = copy_tree(obj)
    meta = obj["metadata"]
    meta["ownerReferences"] = [L.owner_reference(owner)]
    # The replica count is compared on its own (the autoscaler changes it), so it is not hashed.
    hashed = copy_tree(obj)
    if obj["kind"] == "Deployment":
        hashed["spec"].pop("replicas", None)
    meta.setdefault("annotations", {})[L.SPEC_HASH_ANNOTATION] = spec_hash(hashed)
    return obj


def desired_children(
    spec: PixtralSpec,
    settings: OperatorSettings,
    owner: Mapping[str, Any],
    replicas: Mapping[str, int],
) -> list[dict[str, Any]]:
    """Every child of the PixtralDeployment, in apply order (the NetworkPolicy before the runtime pods
    it isolates, RBAC before the pods that use it).

    `replicas` maps track -> runtime replicas (spec.replicas, or the autoscaler's decision)."""
    objs: list[dict[str, Any]] = [runtime_network_policy(spec, settings)]
    for track in spec.tracks():
        objs.append(track_service(spec, track))
        objs.append(track_deployment(spec, track, settings, replicas[track.track]))
    objs += [
        runtime_pdb(spec),
        router_configmap(spec),
        router_service_account(spec),
        router_role(spec),
        router_role_binding(spec),
        router_deployment(spec, settings),
        router_service(spec),
    ]
    monitor = workload_monitor(spec, settings)
    if monitor is not None:
        objs.append(monitor)
    return [_finish(o, owner) for o in objs]


def obsolete_children(spec: PixtralSpec) -> list[tuple[str, str, str]]:
    """(apiVersion, kind, name) of children that exist only for tracks the spec no longer has."""
    present = {t.track for t in spec.tracks()}
    out = []
    for track in TRACKS:
        if track not in present:
            out.append(("apps/v1", "Deployment", L.track_deployment_name(spec.name, track)))
            out.append(("v1", "Service", L.track_service_name(spec.name, track)))
    return out
