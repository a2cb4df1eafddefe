"""The chart's RBAC is derived from what the operator does: every request reconcile() and the
autoscaler send (recorded by the fake API) over the scenarios below, plus what kopf itself sends and
what the operator grants to routers, is exactly the permission table tests/test_chart.py holds the
chart to. A call the chart does not grant fails here; so does a grant nothing uses."""

import kopf
from fakekube import FakeKube, gpu_node, pxd
from pixtral_operator.cache import CachedKube, ObjectCache
from pixtral_operator.handlers.pixtral import register
from pixtral_operator.reconcile import reconcile
from pixtral_operator.scale_loop import Scaler
from pixtral_operator.settings import OperatorSettings
from test_chart import (
    CLUSTER_PERMISSIONS,
    KOPF_PERMISSIONS,
    NAMESPACED_PERMISSIONS,
    OWNER_REFERENCE_PERMISSIONS,
    ROUTER_PERMISSIONS,
)
from test_scale_loop import CannedPrometheus

SETTINGS = OperatorSettings()


def secret(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "team"}}


def claim(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name, "namespace": "team"}}


def everything_the_operator_does() -> set[tuple[str, str, str]]:
    kube = FakeKube(nodes=[gpu_node("gpu-0")])
    for obj in (secret("keys"), secret("hub"), claim("weights")):
        kube.add(obj)
    spec = {
        "replicas": 1,
        "model": {"source": {"pvc": {"claimName": "weights"}}},
        "router": {"apiKeysSecretRef": {"name": "keys"}},
        "canary": {"weight": 10, "model": {"name": "org/pixtral", "source": {"hub": {"tokenSecretRef": {"name": "hub"}}}}},
        "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 3, "targetQueuePerReplica": 2},
    }
    body = pxd(spec=spec)
    reconcile(body, kube, SETTINGS, now="t0")  # creates every child
    # The PodMonitor of the podmonitor mode.
    reconcile(pxd(name="monitored", spec=spec), kube, OperatorSettings(monitoring="podmonitor"), now="t0")
    reconcile(pxd(spec={**spec, "router": {"apiKeysSecretRef": {"name": "keys"}, "replicas": 2}}, generation=2),
              kube, SETTINGS, now="t1")  # updates one
    no_canary = {k: v for k, v in spec.items() if k != "canary"}
    reconcile(pxd(spec=no_canary, generation=3), kube, SETTINGS, now="t2")  # deletes the canary's children
    kube.set_deployment_status("team", "demo-stable", replicas=1, readyReplicas=1, updatedReplicas=1)
    return kube, body, no_canary


def watched_by_the_operator() -> set[tuple[str, str, str]]:
    """The list+watch streams the operator's own handlers open (the watch-fed cache, handlers/watch.py),
    read from the kopf registry the operator registers into; the PixtralDeployments' stream is kopf's."""
    registry = kopf.OperatorRegistry()
    cache = ObjectCache()
    kube = CachedKube(FakeKube(), cache)
    register(registry, SETTINGS, kube, Scaler(kube, None), cache)
    streams = set()
    for handler in [*registry._indexing.get_all_handlers(), *registry._watching.get_all_handlers()]:
        for verb in ("list", "watch"):
            streams.add((verb, handler.selector.group, handler.selector.plural))
    return streams


async def test_every_permission_is_used_and_every_use_is_permitted():
    kube, _, spec = everything_the_operator_does()
    prometheus = CannedPrometheus()
    prometheus.load = 5
    await Scaler(kube, prometheus).tick(pxd(spec=spec, generation=3), now=prometheus.now)
    assert ("patch", "apps", "deployments/scale") in kube.requests, "the autoscaler scaled"

    used: dict[tuple[str, str], set[str]] = {}
    for verb, group, resource in kube.requests | watched_by_the_operator():
        used.setdefault((group, resource), set()).add(verb)
    for table in (KOPF_PERMISSIONS, ROUTER_PERMISSIONS, OWNER_REFERENCE_PERMISSIONS):
        for key, verbs in table.items():
            used.setdefault(key, set()).update(verbs)
    assert used == NAMESPACED_PERMISSIONS | CLUSTER_PERMISSIONS


def test_recorded_requests_name_each_call_of_the_operator():
    kube, _, _ = everything_the_operator_does()
    requests = kube.requests
    assert ("get", "", "persistentvolumeclaims") in requests, "check_spec reads the weight claim"
    assert ("get", "", "secrets") in requests, "check_spec reads the referenced Secrets"
    assert ("create", "", "secrets") in requests, "the internal key's Secret is created once"
    assert ("patch", "", "secrets") not in requests, "and never applied (so never rotated by drift repair)"
    assert ("list", "", "nodes") in requests, "the GPU capacity check"
    assert ("create", "networking.k8s.io", "networkpolicies") in requests
    assert ("delete", "apps", "deployments") in requests and ("delete", "", "services") in requests
    assert ("update", "serving.pixtral.dev", "pixtraldeployments/finalizers") in requests
    # The reconcile itself never lists or watches (the watches feed its cache), and never touches pods.
    assert not {(v, g, r) for v, g, r in requests if v in ("list", "watch") and r != "nodes"}


def test_the_watches_cover_every_child_kind_but_never_secrets():
    streams = watched_by_the_operator()
    for resource in ("deployments", "services", "configmaps", "serviceaccounts", "roles", "rolebindings",
                     "poddisruptionbudgets", "networkpolicies", "podmonitors", "nodes"):
        assert any(r == resource and v == "watch" for v, _, r in streams), resource
    assert not {r for _, _, r in streams if r in ("secrets", "pods", "persistentvolumeclaims")}
