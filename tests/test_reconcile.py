"""reconcile(): children applied once, no write when nothing changed, conditions with
observedGeneration, and specs only the operator can judge -> Degraded without touching what runs."""

import json

import pytest
from fakekube import FakeKube, gpu_node, pxd, replica_owners
from pixtral_operator.conditions import find
from pixtral_operator.reconcile import reconcile
from pixtral_operator.render.labels import AUTOSCALER_FIELD_MANAGER, FIELD_MANAGER
from pixtral_operator.settings import OperatorSettings

SETTINGS = OperatorSettings()
# The GPU capacity check refuses specs only in strict mode (advisory by default: tests/test_capacity.py).
STRICT = OperatorSettings(strict_gpu_check=True)
NODES = [gpu_node("gpu-0"), gpu_node("gpu-1")]


def feed_status(kube: FakeKube, body: dict) -> dict:
    """What the API server would return on the next watch event: the body with the patched status."""
    body = dict(body)
    body["status"] = kube.statuses.get((body["metadata"]["namespace"], body["metadata"]["name"]), {})
    return body


def make_ready(kube: FakeKube, name: str, replicas: int) -> None:
    kube.set_deployment_status("team", name, replicas=replicas, readyReplicas=replicas, updatedReplicas=replicas)


def test_first_reconcile_creates_children_and_status():
    kube = FakeKube(nodes=NODES)
    out = reconcile(pxd(), kube, SETTINGS, now="2026-01-01T00:00:00Z")
    kinds = {k for k, _ in kube.kinds_named()}
    assert {"Deployment", "Service", "ConfigMap", "ServiceAccount", "Role", "RoleBinding", "PodDisruptionBudget"} <= kinds
    assert ("PodMonitor", "demo-runtime") not in kube.kinds_named()
    assert out.status["observedGeneration"] == 1
    assert out.status["endpoint"] == "http://demo-router.team.svc:80/v1"
    assert out.status["selector"] == "app.kubernetes.io/component=runtime,serving.pixtral.dev/deployment=demo,serving.pixtral.dev/track=stable"
    ready = find(out.status["conditions"], "Ready")
    assert ready["status"] == "False" and ready["observedGeneration"] == 1
    assert find(out.status["conditions"], "Progressing")["status"] == "True"
    assert find(out.status["conditions"], "Degraded")["status"] == "False"
    assert any(e.reason == "Created" and "Deployment demo-stable" in e.message for e in out.events)


def test_a_create_posts_one_event_naming_every_child_it_created():
    kube = FakeKube(nodes=NODES)
    out = reconcile(pxd(), kube, SETTINGS, now="t0")
    created = [e for e in out.events if e.reason == "Created"]
    applied = [f"{kind} {name}" for kind, name in kube.kinds_named()]
    assert len(created) == 1 and len(applied) > 5, out.events
    assert all(name in created[0].message for name in applied), (created[0].message, applied)


def test_second_reconcile_with_nothing_changed_writes_nothing():
    kube = FakeKube(nodes=NODES)
    body = pxd()
    reconcile(body, kube, SETTINGS, now="2026-01-01T00:00:00Z")
    kube.writes.clear()
    out = reconcile(feed_status(kube, body), kube, SETTINGS, now="2026-01-01T00:05:00Z")
    assert kube.writes == []
    assert out.writes == 0 and out.events == []


def test_ready_transition_and_then_quiet():
    kube = FakeKube(nodes=NODES)
    body = pxd()
    reconcile(body, kube, SETTINGS, now="t0")
    make_ready(kube, "demo-stable", 1)
    make_ready(kube, "demo-router", 1)
    out = reconcile(feed_status(kube, body), kube, SETTINGS, now="t1")
    ready = find(out.status["conditions"], "Ready")
    assert (ready["status"], ready["reason"], ready["lastTransitionTime"]) == ("True", "Serving", "t1")
    assert find(out.status["conditions"], "Progressing")["status"] == "False"
    assert out.status["readyReplicas"] == 1 and out.status["replicasSummary"] == "1/1"
    assert [e.reason for e in out.events] == ["Serving"]
    kube.writes.clear()
    again = reconcile(feed_status(kube, body), kube, SETTINGS, now="t2")
    assert kube.writes == [] and again.events == []
    assert find(again.status["conditions"], "Ready")["lastTransitionTime"] == "t1"


def test_spec_change_updates_only_what_differs_and_bumps_observed_generation():
    kube = FakeKube(nodes=NODES)
    body = pxd()
    reconcile(body, kube, SETTINGS, now="t0")
    kube.writes.clear()
    changed = feed_status(kube, pxd(spec={"engine": {"imagesPerPrompt": 2}}, generation=2))
    out = reconcile(changed, kube, SETTINGS, now="t1")
    assert sorted(kube.writes) == sorted(
        [("apply", "Deployment", "demo-stable"), ("apply", "ConfigMap", "demo-router"), ("status", "PixtralDeployment", "demo")]
    )
    assert out.status["observedGeneration"] == 2
    assert all(c["observedGeneration"] == 2 for c in out.status["conditions"])


def test_canary_added_then_removed():
    kube = FakeKube(nodes=NODES)
    reconcile(pxd(spec={"canary": {"weight": 20, "engine": {"image": "r:2"}}}), kube, SETTINGS, now="t0")
    assert ("Deployment", "demo-canary") in kube.kinds_named()
    out = reconcile(pxd(spec={}, generation=2), kube, SETTINGS, now="t1")
    assert ("Deployment", "demo-canary") not in kube.kinds_named()
    assert ("Service", "demo-canary") not in kube.kinds_named()
    assert any(e.reason == "Deleted" for e in out.events)
    assert out.status["canary"]["phase"] == "None"


def test_podmonitor_in_its_monitoring_mode():
    kube = FakeKube(nodes=NODES)
    reconcile(pxd(), kube, OperatorSettings(monitoring="podmonitor"), now="t0")
    assert ("PodMonitor", "demo-runtime") in kube.kinds_named()


@pytest.mark.parametrize(
    "spec, nodes, reason, field",
    [
        ({"engine": {"tensorParallelSize": 8}}, NODES, "InsufficientGPUsPerNode", "spec.engine.tensorParallelSize=8"),
        ({"resources": {"gpuProduct": "H200"}}, NODES, "GPUProductNotFound", "spec.resources.gpuProduct"),
        ({"engine": {"tensorParallelSize": 1}}, [], "InsufficientGPUsPerNode", "spec.engine.tensorParallelSize=1"),
        ({"router": {"apiKeysSecretRef": {"name": "nope"}}}, NODES, "SecretNotFound", "spec.router.apiKeysSecretRef.name"),
        ({"model": {"source": {"hub": {"tokenSecretRef": {"name": "hf"}}}}}, NODES, "SecretNotFound", "spec.model.source.hub.tokenSecretRef.name"),
        ({"model": {"source": {"pvc": {"claimName": "w"}}}}, NODES, "PersistentVolumeClaimNotFound", "spec.model.source.pvc.claimName"),
    ],
)
def test_operator_judged_bad_specs_are_degraded_with_the_field_named(spec, nodes, reason, field):
    kube = FakeKube(nodes=nodes)
    out = reconcile(pxd(spec=spec), kube, STRICT, now="t0")
    degraded = find(out.status["conditions"], "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == reason
    assert field in degraded["message"]
    assert kube.kinds_named() == set()  # nothing applied
    assert any(e.type == "Warning" and e.reason == reason for e in out.events)


def test_bad_update_leaves_running_children_untouched():
    kube = FakeKube(nodes=NODES)
    body = pxd()
    reconcile(body, kube, STRICT, now="t0")
    make_ready(kube, "demo-stable", 1)
    make_ready(kube, "demo-router", 1)
    reconcile(feed_status(kube, body), kube, STRICT, now="t1")
    before = kube.get("apps/v1", "Deployment", "team", "demo-stable")
    kube.writes.clear()
    bad = feed_status(kube, pxd(spec={"engine": {"tensorParallelSize": 8}}, generation=2))
    out = reconcile(bad, kube, STRICT, now="t2")
    assert kube.writes == [("status", "PixtralDeployment", "demo")]
    assert kube.get("apps/v1", "Deployment", "team", "demo-stable") == before
    assert find(out.status["conditions"], "Ready")["status"] == "True"  # still serving the old spec
    assert find(out.status["conditions"], "Degraded")["status"] == "True"
    assert find(out.status["conditions"], "Progressing")["reason"] == "SpecRejected"
    # Fixing the spec clears Degraded.
    fixed = feed_status(kube, pxd(spec={"engine": {"tensorParallelSize": 2}}, generation=3))
    out = reconcile(fixed, kube, STRICT, now="t3")
    assert find(out.status["conditions"], "Degraded")["status"] == "False"
    assert any(e.reason == "AsExpected" for e in out.events)


def test_missing_secret_created_later_recovers():
    kube = FakeKube(nodes=NODES)
    body = pxd(spec={"router": {"apiKeysSecretRef": {"name": "keys"}}})
    out = reconcile(body, kube, SETTINGS, now="t0")
    assert find(out.status["conditions"], "Degraded")["status"] == "True"
    kube.add({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "keys", "namespace": "team"}})
    out = reconcile(feed_status(kube, body), kube, SETTINGS, now="t1")
    assert find(out.status["conditions"], "Degraded")["status"] == "False"
    assert ("Deployment", "demo-router") in kube.kinds_named()


def test_node_listing_forbidden_skips_the_gpu_check():
    kube = FakeKube(nodes=None)
    out = reconcile(pxd(spec={"engine": {"tensorParallelSize": 8}}), kube, SETTINGS, now="t0")
    assert find(out.status["conditions"], "Degraded")["status"] == "False"


def test_manual_deployment_scale_is_corrected_without_autoscaling():
    kube = FakeKube(nodes=NODES)
    reconcile(pxd(spec={"replicas": 2}), kube, SETTINGS, now="t0")
    kube.scale_deployment("team", "demo-stable", 5)
    kube.writes.clear()
    reconcile(pxd(spec={"replicas": 2}), kube, SETTINGS, now="t1")
    assert kube.get("apps/v1", "Deployment", "team", "demo-stable")["spec"]["replicas"] == 2


def test_autoscaling_keeps_the_deployments_replica_count():
    spec = {"replicas": 1, "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 3}}
    kube = FakeKube(nodes=NODES)
    reconcile(pxd(spec=spec), kube, SETTINGS, now="t0")
    kube.scale_deployment("team", "demo-stable", 3)  # the autoscaler's decision
    kube.writes.clear()
    reconcile(pxd(spec=spec), kube, SETTINGS, now="t1")
    assert ("apply", "Deployment", "demo-stable") not in kube.writes
    assert kube.get("apps/v1", "Deployment", "team", "demo-stable")["spec"]["replicas"] == 3


def test_scale_to_zero_is_ready_when_router_is():
    spec = {"autoscaling": {"enabled": True, "minReplicas": 0, "maxReplicas": 2}, "replicas": 0}
    kube = FakeKube(nodes=NODES)
    body = pxd(spec=spec)
    reconcile(body, kube, SETTINGS, now="t0")
    make_ready(kube, "demo-router", 1)
    out = reconcile(feed_status(kube, body), kube, SETTINGS, now="t1")
    ready = find(out.status["conditions"], "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "ScaledToZero")


# --- drift: a hand edit of a field the operator renders is applied back by the next pass


def test_hand_edit_of_the_router_configmap_is_reverted():
    kube = FakeKube(nodes=NODES)
    kube.add({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "keys", "namespace": "team"}})
    body = pxd(spec={"router": {"apiKeysSecretRef": {"name": "keys"}}})
    reconcile(body, kube, SETTINGS, now="t0")
    cm = kube.objects[("v1", "ConfigMap", "team", "demo-router")]
    config = json.loads(cm["data"]["config.json"])
    assert config["tenancy"]["apiKeysSecret"] == "keys"
    del config["tenancy"]["apiKeysSecret"]  # would leave the endpoint open
    cm["data"]["config.json"] = json.dumps(config)
    kube.writes.clear()
    out = reconcile(feed_status(kube, body), kube, SETTINGS, now="t1")
    assert kube.writes == [("apply", "ConfigMap", "demo-router")]
    live = json.loads(kube.objects[("v1", "ConfigMap", "team", "demo-router")]["data"]["config.json"])
    assert live["tenancy"]["apiKeysSecret"] == "keys"
    assert [(e.reason, e.message) for e in out.events] == [("Updated", "Updated ConfigMap demo-router")]


def test_hand_edit_of_a_runtime_image_is_reverted_and_server_defaults_are_not_drift():
    kube = FakeKube(nodes=NODES)
    body = pxd(spec={"engine": {"image": "runtime:1"}})
    reconcile(body, kube, SETTINGS, now="t0")
    dep = kube.objects[("apps/v1", "Deployment", "team", "demo-stable")]
    # Fields the API server adds are not the operator's: no write for them.
    dep["spec"]["progressDeadlineSeconds"] = 600
    dep["spec"]["template"]["spec"]["containers"][0]["terminationMessagePath"] = "/dev/termination-log"
    dep["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["successThreshold"] = 1
    kube.writes.clear()
    reconcile(feed_status(kube, body), kube, SETTINGS, now="t1")
    assert kube.writes == []
    dep["spec"]["template"]["spec"]["containers"][0]["image"] = "someone-else:latest"
    reconcile(feed_status(kube, body), kube, SETTINGS, now="t2")
    assert kube.writes == [("apply", "Deployment", "demo-stable")]
    image = kube.objects[("apps/v1", "Deployment", "team", "demo-stable")]["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "runtime:1"


# --- replicas: one owner per field


AUTOSCALED = {"replicas": 1, "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 4}}


def test_reconcile_never_writes_an_autoscaled_tracks_replicas_even_under_a_concurrent_scale():
    kube = FakeKube(nodes=NODES)
    body = pxd(spec=AUTOSCALED)
    reconcile(body, kube, SETTINGS, now="t0")
    kube.scale_deployment("team", "demo-stable", 2)

    def autoscaler_scales_meanwhile(kind, name):
        if (kind, name) == ("Deployment", "demo-stable"):
            kube.after_get = None
            kube.scale_deployment("team", "demo-stable", 3)

    kube.after_get = autoscaler_scales_meanwhile
    # A spec change that rewrites the Deployment, read before the autoscaler's patch lands.
    changed = feed_status(kube, pxd(spec={**AUTOSCALED, "engine": {"maxNumSeqs": 32}}, generation=2))
    reconcile(changed, kube, SETTINGS, now="t1")
    dep = kube.objects[("apps/v1", "Deployment", "team", "demo-stable")]
    assert ("apply", "Deployment", "demo-stable") in kube.writes
    assert dep["spec"]["replicas"] == 3  # the autoscaler's value, not the 2 read before it
    assert replica_owners(dep) == {AUTOSCALER_FIELD_MANAGER}


def test_turning_autoscaling_on_hands_replicas_over_without_resetting_them():
    kube = FakeKube(nodes=NODES)
    reconcile(pxd(spec={"replicas": 3}), kube, SETTINGS, now="t0")
    dep = kube.objects[("apps/v1", "Deployment", "team", "demo-stable")]
    assert replica_owners(dep) == {FIELD_MANAGER}
    on = {"replicas": 3, "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 4},
          "engine": {"maxNumSeqs": 32}}
    reconcile(pxd(spec=on, generation=2), kube, SETTINGS, now="t1")
    dep = kube.objects[("apps/v1", "Deployment", "team", "demo-stable")]
    # Left out of the apply while its only owner was the operator, the field would reset to 1.
    assert dep["spec"]["replicas"] == 3
    assert replica_owners(dep) == {AUTOSCALER_FIELD_MANAGER}
    # Turning it off gives the field back to the spec.
    reconcile(pxd(spec={"replicas": 2}, generation=3), kube, SETTINGS, now="t2")
    dep = kube.objects[("apps/v1", "Deployment", "team", "demo-stable")]
    assert dep["spec"]["replicas"] == 2 and replica_owners(dep) == {FIELD_MANAGER}


def test_autoscaler_status_keys_go_when_autoscaling_is_turned_off():
    kube = FakeKube(nodes=NODES)
    body = pxd(spec=AUTOSCALED)
    reconcile(body, kube, SETTINGS, now="t0")
    kube.patch_status("team", "demo", {"autoscaler": {"stable": {"desired": 1}}, "queue": 0.0})
    reconcile(feed_status(kube, body), kube, SETTINGS, now="t1")
    assert "autoscaler" in kube.statuses[("team", "demo")]  # still on: the autoscaler's keys stay
    off = feed_status(kube, pxd(spec={"replicas": 1}, generation=2))
    reconcile(off, kube, SETTINGS, now="t2")
    assert "autoscaler" not in kube.statuses[("team", "demo")] and "queue" not in kube.statuses[("team", "demo")]
    kube.writes.clear()
    reconcile(feed_status(kube, pxd(spec={"replicas": 1}, generation=2)), kube, SETTINGS, now="t3")
    assert kube.writes == []


# --- never adopt what is not ours


def foreign_service(name: str, owner: dict | None = None) -> dict:
    meta = {"name": name, "namespace": "team"}
    if owner:
        meta["ownerReferences"] = [owner]
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": {"selector": {"app": "theirs"}}}


def test_a_namesake_the_operator_does_not_own_is_a_child_conflict_and_left_untouched():
    kube = FakeKube(nodes=NODES)
    other = {"apiVersion": "serving.pixtral.dev/v1alpha1", "kind": "PixtralDeployment", "name": "other",
             "uid": "other-uid", "controller": True}
    kube.add(foreign_service("demo-router", other))
    before = kube.get("v1", "Service", "team", "demo-router")
    out = reconcile(pxd(), kube, SETTINGS, now="t0")
    degraded = find(out.status["conditions"], "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "ChildConflict")
    assert "Service team/demo-router" in degraded["message"] and "PixtralDeployment other" in degraded["message"]
    assert kube.get("v1", "Service", "team", "demo-router") == before
    assert [w for w in kube.writes if w[0] != "status"] == []
    assert any(e.type == "Warning" and e.reason == "ChildConflict" for e in out.events)


def test_a_namesake_of_a_removed_track_is_not_deleted():
    kube = FakeKube(nodes=NODES)
    kube.add(foreign_service("demo-canary"))
    reconcile(pxd(), kube, SETTINGS, now="t0")
    assert ("Service", "demo-canary") in kube.kinds_named()
    assert ("delete", "Service", "demo-canary") not in kube.writes


# --- apply failures


def test_a_refused_apply_is_a_condition_naming_the_child_and_the_servers_message():
    kube = FakeKube(nodes=NODES)
    message = 'Deployment.apps "demo-stable" is invalid: spec.template.spec.containers[0].image: Required value'
    kube.refuse[("Deployment", "demo-stable")] = (422, message)
    out = reconcile(pxd(), kube, SETTINGS, now="t0")
    assert out.retry
    degraded = find(out.status["conditions"], "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "ApplyFailed")
    assert "Deployment team/demo-stable" in degraded["message"] and message in degraded["message"]
    assert find(out.status["conditions"], "Progressing")["reason"] == "ApplyFailed"
    assert kube.statuses[("team", "demo")]["conditions"] == out.status["conditions"]  # status is not stale
    warnings = [e for e in out.events if e.type == "Warning" and e.reason == "ApplyFailed"]
    assert len(warnings) == 1 and message in warnings[0].message
    # The children after it were not applied; once the server accepts, everything is.
    assert ("Deployment", "demo-router") not in kube.kinds_named()
    del kube.refuse[("Deployment", "demo-stable")]
    again = reconcile(feed_status(kube, pxd()), kube, SETTINGS, now="t1")
    assert not again.retry and find(again.status["conditions"], "Degraded")["status"] == "False"
    assert ("Deployment", "demo-router") in kube.kinds_named()


# --- canary replicas


@pytest.mark.parametrize(
    ("canary", "pods"),
    [
        ({"weight": 20}, 1),
        ({"weight": 20, "replicas": 3}, 3),  # canary.replicas honoured
        ({"weight": 0}, 0),  # no traffic, no GPU
        ({"weight": 0, "replicas": 1}, 1),  # kept for callers that pin the canary
    ],
)
def test_canary_replicas_without_autoscaling(canary, pods):
    kube = FakeKube(nodes=NODES)
    reconcile(pxd(spec={"canary": {**canary, "engine": {"image": "r:2"}}}), kube, SETTINGS, now="t0")
    assert kube.get("apps/v1", "Deployment", "team", "demo-canary")["spec"]["replicas"] == pods
