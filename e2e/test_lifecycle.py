"""The life of a PixtralDeployment as a user walks it, on the local cluster with real vLLM:
create -> Ready -> image and text requests through the router -> a hand edit of the router's
ConfigMap reverted -> canary 20 -> 50 -> removed ->
image limit changed (pods roll, new limit holds) -> kubectl scale -> delete (children and containers gone)."""

from __future__ import annotations

import json
import math

import pytest
from localcluster import wait_for
from pixtral_e2e import (  # noqa: F401  (fixtures)
    API_KEY,
    OTHER_KEY,
    apply,
    chat,
    chat_body,
    client_pod_request,
    condition,
    crds,
    create_api_keys,
    get_pxd,
    operator,
    pod_sandboxes,
    pods,
    post_from_pod,
    pxd_manifest,
    ready_pods,
    router_url,
    tcp_probe_from_pod,
    tiny_model,
    tiny_spec,
    wait_condition,
    wait_gone,
)
from pixtral_operator.render.labels import RUNTIME_HTTP_PORT

pytestmark = [pytest.mark.cluster, pytest.mark.engine, pytest.mark.timeout(1500)]

NAME = "life"
STARTUP = 420  # seconds for a vLLM pod to become ready on a busy 2-core machine


def binomial_bounds(n: int, p: float, sigmas: float = 3.5) -> tuple[int, int]:
    sd = math.sqrt(n * p * (1 - p))
    return max(0, math.floor(n * p - sigmas * sd)), min(n, math.ceil(n * p + sigmas * sd))


def track_counts(url: str, n: int, headers: dict[str, str] | None = None) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _ in range(n):
        r = chat(url, chat_body(max_tokens=1), headers=headers)
        assert r.status_code == 200, r.text
        counts[r.headers["x-pixtral-track"]] = counts.get(r.headers["x-pixtral-track"], 0) + 1
    return counts


def test_lifecycle(cluster, namespace, operator, tiny_model, local_images):
    keys = create_api_keys(cluster, namespace)
    # team-a may pin a track with x-pixtral-track; team-b may not (refused below).
    spec = tiny_spec(tiny_model, router={"apiKeysSecretRef": {"name": keys}, "requestTimeoutSeconds": 120,
                                         "tenants": [{"name": "team-a", "trackOverride": True}]})
    apply(cluster, namespace, pxd_manifest(NAME, spec))

    # --- create -> Ready, with conditions, printer columns and the endpoint in status
    obj = wait_condition(cluster, namespace, NAME, "Ready", "True", STARTUP, reason="Serving")
    status = obj["status"]
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    assert status["endpoint"] == f"http://{NAME}-router.{namespace}.svc:80/v1"
    assert status["readyReplicas"] == 1 and status["replicas"] == 1
    assert condition(obj, "Degraded")["status"] == "False"
    wait_condition(cluster, namespace, NAME, "Progressing", "False", 60)
    table = cluster.kubectl("get", "pxd", NAME, "-n", namespace).stdout
    header, row = table.strip().splitlines()[:2]
    assert header.split()[:6] == ["NAME", "READY", "REPLICAS", "CANARY", "PHASE", "QUEUE"]
    assert row.split()[:3] == [NAME, "True", "1/1"]
    events = cluster.kubectl("get", "events", "-n", namespace, "--field-selector",
                             f"involvedObject.kind=PixtralDeployment,involvedObject.name={NAME}").stdout
    assert "Created" in events and "Serving" in events

    # --- text and image requests through the router with a tenant key
    url = router_url(cluster, namespace, NAME)
    text = chat(url, chat_body(images=0, max_tokens=8))
    assert text.status_code == 200, text.text
    assert text.json()["choices"][0]["message"]["content"] is not None
    image = chat(url, chat_body(images=2, max_tokens=8))
    assert image.status_code == 200, image.text
    assert image.headers["x-pixtral-track"] == "stable"
    assert chat(url, chat_body(), key=None).status_code == 401
    too_many = chat(url, chat_body(images=3))
    assert too_many.status_code == 400 and "2" in too_many.json()["error"]["message"]

    # --- a tenant's client pod calls the router's Service by the DNS name in status.endpoint and by ClusterIP
    from_dns = client_pod_request(cluster, namespace, local_images["router"], status["endpoint"],
                                  chat_body(images=1, max_tokens=4), API_KEY, pod_name="client-dns")
    assert from_dns["status"] == 200, from_dns
    cluster_ip = cluster.rest.get(f"/api/v1/namespaces/{namespace}/services/{NAME}-router")["spec"]["clusterIP"]
    from_ip = client_pod_request(cluster, namespace, local_images["router"], f"http://{cluster_ip}:80/v1",
                                 chat_body(max_tokens=4), API_KEY, pod_name="client-ip")
    assert from_ip["status"] == 200, from_ip

    # --- NetworkPolicy (enforced by kube-router): vLLM's port is closed to other pods, open to the router
    (runtime_pod,) = ready_pods(cluster, namespace, f"serving.pixtral.dev/deployment={NAME},serving.pixtral.dev/track=stable")
    runtime_ip = runtime_pod["status"]["podIP"]
    assert not tcp_probe_from_pod(cluster, namespace, local_images["router"], runtime_ip, RUNTIME_HTTP_PORT, "stranger"), \
        "a pod outside the PixtralDeployment reached vLLM's port"
    # The labels the policy admits, not a router pod's own: those carry pod-template-hash, and the
    # router's ReplicaSet would adopt the probe pod and delete it as a surplus replica.
    policy = cluster.rest.get(f"/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies/{NAME}-runtime")
    router_labels = policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    assert tcp_probe_from_pod(cluster, namespace, local_images["router"], runtime_ip, RUNTIME_HTTP_PORT, "as-router",
                              labels=router_labels), "a pod with the router's labels could not reach vLLM's port"
    # --- the internal key (defence in depth where no enforcer runs): vLLM itself refuses a call
    # without it, even from a pod the policy admits, and a tenant's key is not it
    vllm_url = f"http://{runtime_ip}:{RUNTIME_HTTP_PORT}/v1/chat/completions"
    for pod_name, headers in (("keyless", {}), ("tenant-key", {"authorization": f"Bearer {API_KEY}"})):
        answer = post_from_pod(cluster, namespace, local_images["router"], vllm_url, chat_body(max_tokens=1),
                               pod_name, headers=headers, labels=router_labels)
        assert answer.get("status") == 401, (pod_name, answer)
        assert json.loads(answer["body"]) == {"error": "Unauthorized"}, answer  # vLLM's own answer
    secret = cluster.rest.get(f"/api/v1/namespaces/{namespace}/secrets/{NAME}-apikey")
    assert secret["metadata"]["ownerReferences"][0]["name"] == NAME
    assert chat(url, chat_body(max_tokens=1)).status_code == 200, "the router's calls carry the key"

    # --- drift: a hand edit of the router's ConfigMap that would open the endpoint is reverted (its watch
    # event reconciles the owner at once; the periodic resync is minutes away)
    cm_path = f"/api/v1/namespaces/{namespace}/configmaps/{NAME}-router"
    config = json.loads(cluster.rest.get(cm_path)["data"]["config.json"])
    assert config["tenancy"]["apiKeysSecret"] == keys
    del config["tenancy"]["apiKeysSecret"]
    cluster.kubectl("patch", "configmap", f"{NAME}-router", "-n", namespace, "--type=merge",
                    "-p", json.dumps({"data": {"config.json": json.dumps(config)}}))
    wait_for(lambda: json.loads(cluster.rest.get(cm_path)["data"]["config.json"])["tenancy"].get("apiKeysSecret") == keys,
             60, "the operator to apply the router's ConfigMap back")
    wait_for(lambda: chat(url, chat_body(max_tokens=1), key=None).status_code == 401, 60,
             "the router to refuse a call without a key again")

    # --- add a canary at weight 20: traffic splits
    spec["canary"] = {"weight": 20, "replicas": 1, "stickyHeader": "x-session-id", "engine": {"env": spec["engine"]["env"] + [{"name": "PIXTRAL_TRACK_NOTE", "value": "canary"}]}}
    apply(cluster, namespace, pxd_manifest(NAME, spec))
    wait_condition(cluster, namespace, NAME, "CanaryReady", "True", STARTUP)
    wait_for(lambda: (get_pxd(cluster, namespace, NAME)["status"].get("canary") or {}).get("weight") == 20, 30, "status.canary.weight 20")
    n = 60
    counts = track_counts(url, n)
    lo, hi = binomial_bounds(n, 0.2)
    assert lo <= counts.get("canary", 0) <= hi, counts
    pinned = {chat(url, chat_body(max_tokens=1), headers={"x-pixtral-track": "canary"}).headers["x-pixtral-track"] for _ in range(3)}
    assert pinned == {"canary"}
    refused = chat(url, chat_body(max_tokens=1), key=OTHER_KEY, headers={"x-pixtral-track": "canary"})
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"]["code"] == "track_override_not_allowed", refused.text
    for session in ("alice", "bob", "carol"):
        tracks = {chat(url, chat_body(max_tokens=1), headers={"x-session-id": session}).headers["x-pixtral-track"] for _ in range(4)}
        assert len(tracks) == 1, (session, tracks)

    # --- raise to 50
    spec["canary"]["weight"] = 50
    apply(cluster, namespace, pxd_manifest(NAME, spec))
    wait_for(lambda: (get_pxd(cluster, namespace, NAME)["status"].get("canary") or {}).get("weight") == 50, 30, "status.canary.weight 50")
    counts = track_counts(url, n)
    lo, hi = binomial_bounds(n, 0.5)
    assert lo <= counts.get("canary", 0) <= hi, counts

    # --- remove the canary: canary pods gone, traffic all stable
    del spec["canary"]
    apply(cluster, namespace, pxd_manifest(NAME, spec))
    wait_gone(cluster, f"/apis/apps/v1/namespaces/{namespace}/deployments/{NAME}-canary", 60, "the canary Deployment to be deleted")
    wait_for(lambda: not pods(cluster, namespace, f"serving.pixtral.dev/deployment={NAME},serving.pixtral.dev/track=canary"),
             120, "canary pods to be gone")
    assert condition(get_pxd(cluster, namespace, NAME), "CanaryReady") is None
    counts = track_counts(url, 20)
    assert counts == {"stable": 20}

    # --- change the image limit: pods roll and the new limit holds
    selector = f"serving.pixtral.dev/deployment={NAME},serving.pixtral.dev/track=stable"
    old_uids = {p["metadata"]["uid"] for p in pods(cluster, namespace, selector)}
    spec["engine"]["imagesPerPrompt"] = 3
    apply(cluster, namespace, pxd_manifest(NAME, spec))

    def rolled() -> bool:
        ready = ready_pods(cluster, namespace, selector)
        all_pods = pods(cluster, namespace, selector)
        return bool(ready) and all(p["metadata"]["uid"] not in old_uids for p in all_pods)

    wait_for(rolled, STARTUP, "stable pods replaced by pods with the new image limit")
    wait_condition(cluster, namespace, NAME, "Ready", "True", 60)
    three = chat(url, chat_body(images=3, max_tokens=2))
    assert three.status_code == 200, three.text
    four = chat(url, chat_body(images=4))
    assert four.status_code == 400 and "3" in four.json()["error"]["message"]

    # --- kubectl scale pxd (spec.replicas through the scale subresource)
    cluster.kubectl("scale", "pxd", NAME, "-n", namespace, "--replicas=2")
    # The second pod exists and is counted; waiting for its model to load proves nothing more here.
    # (old pods of the roll above may still be draining: wait for the Deployment, then the status)
    wait_for(lambda: cluster.rest.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/{NAME}-stable")["spec"]["replicas"]
             == 2, 120, "the stable Deployment scaled to 2")
    wait_for(lambda: get_pxd(cluster, namespace, NAME)["status"].get("replicas") == 2, 120, "status.replicas 2")
    scale = cluster.rest.get(f"/apis/serving.pixtral.dev/v1alpha1/namespaces/{namespace}/pixtraldeployments/{NAME}/scale")
    assert scale["spec"]["replicas"] == 2 and scale["status"]["replicas"] == 2
    assert "serving.pixtral.dev/track=stable" in scale["status"]["selector"]

    # --- delete: every child object and process gone
    cluster.kubectl("delete", "pxd", NAME, "-n", namespace, "--wait=true", timeout=120)
    for path in (
        f"/apis/apps/v1/namespaces/{namespace}/deployments/{NAME}-stable",
        f"/apis/apps/v1/namespaces/{namespace}/deployments/{NAME}-router",
        f"/api/v1/namespaces/{namespace}/services/{NAME}-router",
        f"/api/v1/namespaces/{namespace}/services/{NAME}-stable",
        f"/api/v1/namespaces/{namespace}/configmaps/{NAME}-router",
        f"/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets/{NAME}-runtime",
        f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/roles/{NAME}-router",
        f"/api/v1/namespaces/{namespace}/secrets/{NAME}-apikey",
    ):
        wait_gone(cluster, path, 120, f"{path} to be garbage-collected")
    wait_for(lambda: not pods(cluster, namespace, f"serving.pixtral.dev/deployment={NAME}"), 180, "every pod to be gone")
    wait_for(lambda: not pod_sandboxes(cluster, namespace, NAME), 60, "every pod sandbox gone from the node")
