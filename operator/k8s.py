"""The only module that talks to the Kubernetes API.

`KubeApi` is deliberately small: get, server-side apply, delete, status patch, and the few reads the
operator needs to judge a spec (nodes, Secrets, PVCs).
It is synchronous: kopf runs sync handlers in worker threads."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from typing import Any, Protocol

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ConflictError, NotFoundError
from pixtral_operator.render.labels import AUTOSCALER_FIELD_MANAGER, FIELD_MANAGER
from pixtral_operator.spec import GROUP, KIND, VERSION

log = logging.getLogger(__name__)


class ApplyError(Exception):
    """The API server refused an apply; `message` is its own explanation (from the Status body)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


def _server_message(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "")["message"])
    except (ValueError, KeyError, TypeError):
        return str(exc.reason or exc)


class Kube(Protocol):
    """What reconcile() needs from the cluster; tests pass a recording fake."""

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None: ...
    def get_owned(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None: ...
    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]: ...
    def create(self, obj: Mapping[str, Any]) -> dict[str, Any] | None: ...
    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool: ...
    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None: ...
    def scale_deployment(self, namespace: str, name: str, replicas: int) -> None: ...
    def claim_replicas(self, namespace: str, name: str, replicas: int) -> bool: ...
    def list_nodes(self) -> list[dict[str, Any]] | None: ...


def load_config(connections: int | None = None) -> None:
    """In a pod: the ServiceAccount; elsewhere: KUBECONFIG / ~/.kube/config. `connections`: keep-alive
    connections to the API server kept for reuse, at least; the client's default (5 per CPU, so 10
    on 2 cores) is below the operator's thread count, and every request past it opens and closes a
    new TLS connection ("Connection pool is full, discarding connection")."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    if connections is not None:
        configuration = client.Configuration.get_default_copy()
        configuration.connection_pool_maxsize = max(configuration.connection_pool_maxsize, connections)
        client.Configuration.set_default(configuration)


class KubeApi:
    def __init__(self, api_client: client.ApiClient | None = None) -> None:
        self._api_client = api_client or client.ApiClient()
        self._dynamic: DynamicClient | None = None
        self._lock = threading.Lock()
        self._discovery_lock = threading.Lock()

    @property
    def dynamic(self) -> DynamicClient:
        with self._lock:
            if self._dynamic is None:
                self._dynamic = DynamicClient(self._api_client)
            return self._dynamic

    def _resource(self, api_version: str, kind: str):
        # The dynamic client's discovery cache is not thread-safe, and kopf runs the change
        # handlers and the timers in different threads.
        with self._discovery_lock:
            return self.dynamic.resources.get(api_version=api_version, kind=kind)

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            return self._resource(api_version, kind).get(name=name, namespace=namespace).to_dict()
        except NotFoundError:
            return None

    def get_owned(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """An object that matters only if the operator made it (the cached `Kube` answers from its
        watch cache; this one asks the API)."""
        return self.get(api_version, kind, namespace, name)

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        resource = self._resource(obj["apiVersion"], obj["kind"])
        meta = obj["metadata"]
        try:
            result = resource.server_side_apply(
                body=dict(obj),
                name=meta["name"],
                namespace=meta.get("namespace"),
                field_manager=FIELD_MANAGER,
                force_conflicts=True,
            )
        except ApiException as exc:
            raise ApplyError(exc.status or 0, _server_message(exc)) from exc
        return result.to_dict()

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any] | None:
        """A plain create (no apply): None when an object of that name exists already."""
        resource = self._resource(obj["apiVersion"], obj["kind"])
        try:
            result = resource.create(body=dict(obj), namespace=obj["metadata"].get("namespace"))
        except ConflictError:
            return None
        except ApiException as exc:
            raise ApplyError(exc.status or 0, _server_message(exc)) from exc
        return result.to_dict()

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        try:
            self._resource(api_version, kind).delete(
                name=name, namespace=namespace, body={"propagationPolicy": "Background"}
            )
            return True
        except NotFoundError:
            return False

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        client.CustomObjectsApi(self._api_client).patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, "pixtraldeployments", name, {"status": dict(status)}
        )

    def scale_deployment(self, namespace: str, name: str, replicas: int) -> None:
        """The autoscaler's write: through /scale, under its own field manager."""
        client.AppsV1Api(self._api_client).patch_namespaced_deployment_scale(
            name, namespace, {"spec": {"replicas": replicas}}, field_manager=AUTOSCALER_FIELD_MANAGER
        )

    def claim_replicas(self, namespace: str, name: str, replicas: int) -> bool:
        """Make the autoscaler's field manager an owner of a Deployment's spec.replicas at `replicas`
        (its live value), by applying that one field. Not forced: a 409 means another manager set a
        different value meanwhile (the autoscaler itself), which already owns the field: False."""
        body = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"replicas": replicas},
        }
        try:
            self._resource("apps/v1", "Deployment").server_side_apply(
                body=body, name=name, namespace=namespace, field_manager=AUTOSCALER_FIELD_MANAGER, force_conflicts=False
            )
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise ApplyError(exc.status or 0, _server_message(exc)) from exc
        return True

    def list_nodes(self) -> list[dict[str, Any]] | None:
        """None when the operator may not list nodes (the GPU check is skipped then)."""
        try:
            nodes = client.CoreV1Api(self._api_client).list_node(_request_timeout=10)
        except ApiException as exc:
            if exc.status in (401, 403):
                return None
            raise
        return [self._api_client.sanitize_for_serialization(n) for n in nodes.items]

    def invalidate_discovery(self) -> None:
        with self._lock:
            self._dynamic = None


def owner_of(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = body["metadata"]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"]},
    }
