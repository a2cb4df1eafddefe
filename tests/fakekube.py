"""A recording in-memory stand-in for pixtral_operator.k8s.KubeApi, for unit tests of reconcile().

Server-side apply is modelled where the operator depends on it: the owners of a Deployment's
`spec.replicas` are kept in managedFields as the API server keeps them. An apply that sets the field
takes it (or shares it at an equal value); an apply that leaves it out gives up the applier's share,
and a field nobody owns any more is reset to its default (1), as the API server does. An update
through /scale that changes the value moves the field to the scaler's manager."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from pixtral_operator.jsontree import merge_patch
from pixtral_operator.k8s import ApplyError
from pixtral_operator.render.labels import AUTOSCALER_FIELD_MANAGER, FIELD_MANAGER

# kind -> resource, for recording the API request (and so the RBAC permission) each call is.
RESOURCES = {
    "Deployment": "deployments",
    "Service": "services",
    "ConfigMap": "configmaps",
    "ServiceAccount": "serviceaccounts",
    "Secret": "secrets",
    "PersistentVolumeClaim": "persistentvolumeclaims",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "NetworkPolicy": "networkpolicies",
    "Role": "roles",
    "RoleBinding": "rolebindings",
    "PodMonitor": "podmonitors",
    "PixtralDeployment": "pixtraldeployments",
}


def group_of(api_version: str) -> str:
    return api_version.rpartition("/")[0]


class FakeKube:
    def __init__(self, nodes: list[dict[str, Any]] | None = None):
        self.objects: dict[tuple[str, str, str | None, str], dict[str, Any]] = {}
        self.writes: list[tuple[str, str, str]] = []  # (verb, kind, name)
        # (verb, apiGroup, resource) of every request KubeApi would send for these calls.
        self.requests: set[tuple[str, str, str]] = set()
        self.statuses: dict[tuple[str, str], dict[str, Any]] = {}
        self.nodes = nodes
        self._uid = 0
        # (kind, name) -> (HTTP status, message) the API server answers to an apply of that object.
        self.refuse: dict[tuple[str, str], tuple[int, str]] = {}
        # Called after every get (kind, name): lets a test act between a read and the write after it.
        self.after_get: Any = None

    # --- reads
    def _request(self, verb: str, api_version: str, kind: str, subresource: str = "") -> None:
        resource = RESOURCES[kind] + (f"/{subresource}" if subresource else "")
        self.requests.add((verb, group_of(api_version), resource))

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        self._request("get", api_version, kind)
        obj = self.objects.get((api_version, kind, namespace, name))
        obj = copy.deepcopy(obj) if obj is not None else None
        if self.after_get is not None:
            self.after_get(kind, name)
        return obj

    def get_owned(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        return self.get(api_version, kind, namespace, name)

    def list_nodes(self) -> list[dict[str, Any]] | None:
        self.requests.add(("list", "", "nodes"))
        return copy.deepcopy(self.nodes)

    # --- writes
    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        key = (obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])
        if (obj["kind"], meta["name"]) in self.refuse:
            self._request("patch", obj["apiVersion"], obj["kind"])
            raise ApplyError(*self.refuse[(obj["kind"], meta["name"])])
        old = self.objects.get(key)
        # Server-side apply is a PATCH; for an object that does not exist yet the API server also
        # authorizes `create`.
        self._request("patch", obj["apiVersion"], obj["kind"])
        if old is None:
            self._request("create", obj["apiVersion"], obj["kind"])
        # An ownerReference with blockOwnerDeletion needs `update` on the owner's finalizers where the
        # OwnerReferencesPermissionEnforcement admission plugin runs.
        for ref in meta.get("ownerReferences") or ():
            if ref.get("blockOwnerDeletion"):
                self._request("update", ref["apiVersion"], ref["kind"], "finalizers")
        new = copy.deepcopy(dict(obj))
        if old is None:
            self._uid += 1
            new["metadata"]["uid"] = f"uid-{self._uid}"
            new["metadata"]["generation"] = 1
        else:
            new["metadata"]["uid"] = old["metadata"]["uid"]
            changed = old.get("spec") != new.get("spec")
            new["metadata"]["generation"] = old["metadata"]["generation"] + (1 if changed else 0)
            if "status" in old:
                new["status"] = old["status"]
        if obj["kind"] == "Deployment":
            self._apply_replicas(old, new, FIELD_MANAGER)
        self.objects[key] = new
        self.writes.append(("apply", obj["kind"], meta["name"]))
        return copy.deepcopy(new)

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any] | None:
        meta = obj["metadata"]
        key = (obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])
        self._request("create", obj["apiVersion"], obj["kind"])
        for ref in meta.get("ownerReferences") or ():
            if ref.get("blockOwnerDeletion"):
                self._request("update", ref["apiVersion"], ref["kind"], "finalizers")
        if key in self.objects:
            return None  # 409 AlreadyExists
        new = copy.deepcopy(dict(obj))
        if "stringData" in new:  # the API server stores stringData as data (base64 there; plain here)
            new["data"] = {**new.get("data", {}), **new.pop("stringData")}
        self._uid += 1
        new["metadata"]["uid"] = f"uid-{self._uid}"
        self.objects[key] = new
        self.writes.append(("create", obj["kind"], meta["name"]))
        return copy.deepcopy(new)

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        self._request("delete", api_version, kind)
        self.writes.append(("delete", kind, name))
        return self.objects.pop((api_version, kind, namespace, name), None) is not None

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        self._request("patch", "serving.pixtral.dev/v1alpha1", "PixtralDeployment", "status")
        self.writes.append(("status", "PixtralDeployment", name))
        # A merge patch (RFC 7386), as KubeApi sends it: null removes a key, at every depth.
        self.statuses[(namespace, name)] = merge_patch(self.statuses.get((namespace, name), {}), status)

    def scale_deployment(self, namespace: str, name: str, replicas: int, manager: str = AUTOSCALER_FIELD_MANAGER) -> None:
        """An update through /scale (the autoscaler's; `manager` "kubectl" for a hand `kubectl scale`)."""
        self._request("patch", "apps/v1", "Deployment", "scale")
        self.writes.append(("scale", "Deployment", name))
        dep = self.objects[("apps/v1", "Deployment", namespace, name)]
        if dep["spec"].get("replicas") != replicas:
            dep["spec"]["replicas"] = replicas
            _set_replica_owners(dep, {manager})

    def claim_replicas(self, namespace: str, name: str, replicas: int) -> bool:
        self._request("patch", "apps/v1", "Deployment")
        self.writes.append(("claim", "Deployment", name))
        dep = self.objects[("apps/v1", "Deployment", namespace, name)]
        owners = replica_owners(dep)
        if dep["spec"].get("replicas") != replicas and owners - {AUTOSCALER_FIELD_MANAGER}:
            return False  # 409: another manager owns a different value
        if dep["spec"].get("replicas") != replicas:
            owners = set()
        dep["spec"]["replicas"] = replicas
        _set_replica_owners(dep, owners | {AUTOSCALER_FIELD_MANAGER})
        return True

    def _apply_replicas(self, old: dict[str, Any] | None, new: dict[str, Any], manager: str) -> None:
        owners = replica_owners(old) if old is not None else set()
        if "replicas" in new["spec"]:
            same = old is not None and old["spec"].get("replicas") == new["spec"]["replicas"]
            owners = (owners | {manager}) if same else {manager}  # forced: the field is taken
        else:
            owners.discard(manager)
            if owners and old is not None:
                new["spec"]["replicas"] = old["spec"]["replicas"]
            else:
                new["spec"]["replicas"] = 1  # nobody owns it: the API server's default
        _set_replica_owners(new, owners)

    # --- helpers for tests
    def add(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        self.objects[(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])] = copy.deepcopy(obj)

    def set_deployment_status(self, namespace: str, name: str, **status: int) -> None:
        dep = self.objects[("apps/v1", "Deployment", namespace, name)]
        dep["status"] = {"observedGeneration": dep["metadata"]["generation"], **status}

    def kinds_named(self) -> set[tuple[str, str]]:
        return {(k[1], k[3]) for k in self.objects}


def replica_owners(dep: Mapping[str, Any]) -> set[str]:
    return {
        e["manager"]
        for e in (dep.get("metadata") or {}).get("managedFields") or ()
        if "f:replicas" in (e.get("fieldsV1") or {}).get("f:spec", {})
    }


def _set_replica_owners(dep: dict[str, Any], owners: set[str]) -> None:
    dep["metadata"]["managedFields"] = [
        {"manager": m, "operation": "Apply", "fieldsV1": {"f:spec": {"f:replicas": {}}}} for m in sorted(owners)
    ]


def gpu_node(name: str, gpus: int = 4, product: str = "NVIDIA-A100-SXM4-80GB") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"nvidia.com/gpu.product": product}},
        "status": {"allocatable": {"nvidia.com/gpu": str(gpus)}},
    }


def pxd(name: str = "demo", namespace: str = "team", spec: dict[str, Any] | None = None, generation: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "serving.pixtral.dev/v1alpha1",
        "kind": "PixtralDeployment",
        "metadata": {"name": name, "namespace": namespace, "uid": "pxd-uid", "generation": generation},
        "spec": spec if spec is not None else {},
        "status": {},
    }
