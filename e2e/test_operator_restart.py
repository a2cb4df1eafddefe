"""Killing the operator in the middle of a reconcile and starting it again converges to the same
objects: no duplicates, no lost status."""

from __future__ import annotations

import time

import pytest
from localcluster import wait_for
from pixtral_e2e import (
    InClusterOperator,
    apply,
    crds,
    get_pxd,
    local_images,
    pxd_manifest,
    tiny_model,
    tiny_model_dir,
    tiny_spec,
    wait_condition,
)

pytestmark = [pytest.mark.cluster]

CHILDREN = [
    ("apps/v1", "deployments", "r-stable"),
    ("apps/v1", "deployments", "r-router"),
    ("v1", "services", "r-stable"),
    ("v1", "services", "r-router"),
    ("v1", "configmaps", "r-router"),
    ("v1", "serviceaccounts", "r-router"),
    ("rbac.authorization.k8s.io/v1", "roles", "r-router"),
    ("rbac.authorization.k8s.io/v1", "rolebindings", "r-router"),
    ("policy/v1", "poddisruptionbudgets", "r-runtime"),
]


def path(namespace: str, api: str, plural: str, name: str = "") -> str:
    prefix = "/api/v1" if api == "v1" else f"/apis/{api}"
    return f"{prefix}/namespaces/{namespace}/{plural}" + (f"/{name}" if name else "")


# What the chart runs the operator with (operator/settings.py's default).
RESYNC_SECONDS = 5


def updated_events(cluster, namespace: str, name: str) -> int:
    """How often the operator reported rewriting a child of `name` (Events are aggregated: count)."""
    events = cluster.rest.get(path(namespace, "v1", "events"),
                              fieldSelector=f"involvedObject.kind=PixtralDeployment,involvedObject.name={name}")["items"]
    return sum(e.get("count") or 1 for e in events if e.get("reason") == "Updated")


def test_kill_mid_reconcile_and_restart(cluster, crds, namespace, tiny_model, local_images):
    op = InClusterOperator(cluster, namespace, local_images).start()
    try:
        apply(cluster, namespace, pxd_manifest("r", tiny_spec(tiny_model, replicas=0)))
        # Kill as soon as the first child exists: the reconcile is half done.
        wait_for(lambda: cluster.rest.get_or_none(path(namespace, "v1", "services", "r-stable")), 60, "the first child")
        killed = op.kill()
        partial = [c for c in CHILDREN if cluster.rest.get_or_none(path(namespace, *c))]

        op.wait_ready(excluding=killed)
        obj = wait_condition(cluster, namespace, "r", "Progressing", "False", 120)
        for child in CHILDREN:
            assert cluster.rest.get_or_none(path(namespace, *child)) is not None, child
        # Exactly one of each: deterministic names, and one ReplicaSet per Deployment.
        for api, plural, _ in CHILDREN:
            items = cluster.rest.get(path(namespace, api, plural))["items"]
            names = [i["metadata"]["name"] for i in items]
            assert len(names) == len(set(names))
        # (the operator's own ReplicaSet lives in this namespace too)
        rs = cluster.rest.get(path(namespace, "apps/v1", "replicasets"), labelSelector="serving.pixtral.dev/deployment=r")["items"]
        assert sorted(r["metadata"]["labels"].get("app.kubernetes.io/component") for r in rs) == ["router", "runtime"]
        for child in CHILDREN:
            owners = cluster.rest.get(path(namespace, *child))["metadata"]["ownerReferences"]
            assert [o["uid"] for o in owners] == [obj["metadata"]["uid"]]
        conditions_before = obj["status"]["conditions"]
        versions = {c: cluster.rest.get(path(namespace, *c))["metadata"]["resourceVersion"] for c in CHILDREN}
        assert obj["metadata"]["finalizers"] == ["serving.pixtral.dev/finalizer"], obj["metadata"]["finalizers"]
        updates_before = updated_events(cluster, namespace, "r")

        # A second restart with nothing changed: status kept, no child rewritten.
        op.restart()
        # Observe three resync periods of the restarted operator: nothing may change.
        deadline = time.monotonic() + 3 * RESYNC_SECONDS
        while time.monotonic() < deadline:
            for child in CHILDREN:
                assert cluster.rest.get(path(namespace, *child))["metadata"]["resourceVersion"] == versions[child], child
            time.sleep(0.5)
        after = get_pxd(cluster, namespace, "r")
        assert after["status"]["observedGeneration"] == after["metadata"]["generation"]
        # Not even a no-op apply: the live children hold every rendered field (the drift check
        # agrees with what the API server stores, defaults and omitted zero values included).
        assert updated_events(cluster, namespace, "r") == updates_before
        assert [
            {k: c[k] for k in ("type", "status", "reason", "lastTransitionTime")} for c in after["status"]["conditions"]
        ] == [{k: c[k] for k in ("type", "status", "reason", "lastTransitionTime")} for c in conditions_before]
        print(f"children present when the operator was killed: {len(partial)} of {len(CHILDREN)}")
    finally:
        op.stop()
