"""Every pod the operator renders passes the Pod Security `restricted` profile, writes only to its own
emptyDirs, and the runtime pods are isolated by a NetworkPolicy that admits their router (and the
monitoring namespaces, for /metrics) only."""

from __future__ import annotations

from typing import Any

import pytest
from pixtral_operator.render import desired_children
from pixtral_operator.render import labels as L
from pixtral_operator.settings import OperatorSettings
from pixtral_operator.spec import parse

SETTINGS = OperatorSettings(runtime_image="example/runtime:1", router_image="example/router:1")
OWNER = {
    "apiVersion": "serving.pixtral.dev/v1alpha1",
    "kind": "PixtralDeployment",
    "metadata": {"name": "demo", "namespace": "team", "uid": "uid-1"},
}
# The volume types the `restricted` profile allows (Pod Security Standards, "Volume Types").
RESTRICTED_VOLUME_TYPES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret",
}
SPECS = {
    "hub": {},
    "hub-with-token": {"model": {"source": {"hub": {"tokenSecretRef": {"name": "hf"}}}}},
    "pvc": {"model": {"source": {"pvc": {"claimName": "weights", "subPath": "pixtral"}}}},
    "canary": {"canary": {"weight": 20, "engine": {"image": "r:2"}}, "router": {"apiKeysSecretRef": {"name": "keys"}}},
    "host-path": {"model": {"source": {"hostPath": {"path": "/data/pixtral"}}}},
}


def children(spec: dict[str, Any], settings: OperatorSettings = SETTINGS) -> dict[tuple[str, str], dict[str, Any]]:
    s = parse("demo", "team", spec)
    objs = desired_children(s, settings, OWNER, {t.track: t.replicas for t in s.tracks()})
    return {(o["kind"], o["metadata"]["name"]): o for o in objs}


def pod_templates(objs: dict[tuple[str, str], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: o["spec"]["template"] for (kind, name), o in objs.items() if kind == "Deployment"}


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """The checks of the `restricted` Pod Security level (which includes `baseline`), on a pod spec."""
    problems = []
    pod_sc = pod.get("securityContext") or {}
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            problems.append(flag)
    for volume in pod.get("volumes") or ():
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            problems.append(f"volume {volume['name']}: {sorted(kinds)}")
    if pod_sc.get("runAsUser") == 0:
        problems.append("pod runAsUser 0")
    for container in pod.get("initContainers", []) + pod["containers"]:
        sc = container.get("securityContext") or {}
        name = container["name"]
        if sc.get("privileged"):
            problems.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation must be false")
        if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
            problems.append(f"{name}: runAsNonRoot must be true")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            problems.append(f"{name}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile {seccomp}")
        capabilities = sc.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or ()):
            problems.append(f"{name}: capabilities must drop ALL")
        if set(capabilities.get("add") or ()) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: capabilities add {capabilities['add']}")
        if any(port.get("hostPort") for port in container.get("ports") or ()):
            problems.append(f"{name}: hostPort")
        if sc.get("procMount", "Default") != "Default":
            problems.append(f"{name}: procMount")
    return problems


@pytest.mark.parametrize("case", sorted(SPECS))
def test_every_pod_passes_the_restricted_profile(case):
    for name, template in pod_templates(children(SPECS[case])).items():
        problems = restricted_violations(template["spec"])
        if case == "host-path" and name.endswith(("-stable", "-canary")):
            # Only what the spec asks for: a hostPath source is refused by a restricted namespace.
            assert problems == ["volume model: ['hostPath']"], name
        else:
            assert problems == [], name


@pytest.mark.parametrize("case", sorted(SPECS))
def test_every_container_has_a_read_only_root_and_writes_to_its_own_emptydirs(case):
    for name, template in pod_templates(children(SPECS[case])).items():
        pod = template["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, name
            mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
            assert "emptyDir" in volumes[mounts["/tmp"]["name"]], name
            for mount in mounts.values():
                if "emptyDir" not in volumes[mount["name"]]:
                    assert mount.get("readOnly") is True, (name, mount)


def test_runtime_writable_paths_are_emptydirs_and_it_has_no_api_token():
    pod = pod_templates(children({}))["demo-stable"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    # HOME and every cache vLLM, torch and the hub write to lie on an emptyDir of the pod.
    for var in ("HOME", "TMPDIR", "HF_HOME", "VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR"):
        path = env[var]
        mount = max((m for m in mounts if path == m or path.startswith(m + "/")), key=len)
        assert "emptyDir" in volumes[mounts[mount]], var
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsUser"] == pod["securityContext"]["fsGroup"] == 65532


def test_user_env_cannot_move_home_or_caches():
    spec = {"engine": {"env": [{"name": "HOME", "value": "/root"}, {"name": "HF_HOME", "value": "/x"}]}}
    (container,) = pod_templates(children(spec))["demo-stable"]["spec"]["containers"]
    names = [e["name"] for e in container["env"]]
    assert len(names) == len(set(names)), "no duplicate env names (the API server refuses them on apply)"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["HOME"] == "/cache" and env["HF_HOME"] == "/cache/huggingface"


def test_router_keeps_its_token_and_its_explicit_command():
    pod = pod_templates(children({}))["demo-router"]["spec"]
    assert pod["automountServiceAccountToken"] is True
    assert pod["serviceAccountName"] == "demo-router"
    (container,) = pod["containers"]
    assert container["command"] == ["pixtral-runtime", "router"] and "args" not in container
    assert container["image"] == "example/router:1"
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}


def test_router_defaults_to_the_slim_router_image():
    pod = pod_templates(children({}, OperatorSettings()))["demo-router"]["spec"]
    assert pod["containers"][0]["image"].startswith("ghcr.io/pixtral-operator/pixtral-router:")
    runtime = pod_templates(children({}, OperatorSettings()))["demo-stable"]["spec"]
    assert runtime["containers"][0]["image"].startswith("ghcr.io/pixtral-operator/pixtral-runtime:")
    pinned = pod_templates(children({"router": {"image": "mine/router:2"}}, OperatorSettings()))
    assert pinned["demo-router"]["spec"]["containers"][0]["image"] == "mine/router:2"


# ---------------------------------------------------------------- NetworkPolicy

def test_network_policy_selects_the_runtime_pods_of_both_tracks_only():
    objs = children(SPECS["canary"])
    policy = objs[("NetworkPolicy", "demo-runtime")]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    templates = pod_templates(objs)
    for name in ("demo-stable", "demo-canary"):
        labels = templates[name]["metadata"]["labels"]
        assert selector.items() <= labels.items(), name
    assert not selector.items() <= templates["demo-router"]["metadata"]["labels"].items()
    assert policy["spec"]["policyTypes"] == ["Ingress"], "egress stays open: the hub download"
    assert policy["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert policy["metadata"]["labels"][L.DEPLOYMENT_LABEL] == "demo"


def test_network_policy_admits_the_router_and_the_monitoring_namespaces_to_vllm_only():
    objs = children({})
    ingress = objs[("NetworkPolicy", "demo-runtime")]["spec"]["ingress"]
    router_pod_labels = pod_templates(objs)["demo-router"]["metadata"]["labels"]
    router_rule, metrics_rule = ingress
    (source,) = router_rule["from"]
    assert source["podSelector"]["matchLabels"].items() <= router_pod_labels.items()
    assert "namespaceSelector" not in source, "the router of this deployment, in this namespace"
    assert router_rule["ports"] == [{"protocol": "TCP", "port": L.RUNTIME_HTTP_PORT}]
    (source,) = metrics_rule["from"]
    assert source == {"namespaceSelector": {"matchExpressions": [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["monitoring"]}]}}
    assert metrics_rule["ports"] == [{"protocol": "TCP", "port": L.RUNTIME_HTTP_PORT}]
    # The health port is for the kubelet's probes, which come from the node.
    assert all(p["port"] != L.RUNTIME_HEALTH_PORT for rule in ingress for p in rule["ports"])


def test_network_policy_follows_the_metrics_setting():
    ingress = children({}, OperatorSettings(metrics_from_namespaces=("obs", "prom")))[
        ("NetworkPolicy", "demo-runtime")]["spec"]["ingress"]
    assert ingress[1]["from"][0]["namespaceSelector"]["matchExpressions"][0]["values"] == ["obs", "prom"]
    only_router = children({}, OperatorSettings(metrics_from_namespaces=()))[("NetworkPolicy", "demo-runtime")]
    assert len(only_router["spec"]["ingress"]) == 1


def test_network_policy_is_applied_before_the_pods_it_isolates():
    s = parse("demo", "team", {})
    kinds = [o["kind"] for o in desired_children(s, SETTINGS, OWNER, {"stable": 1})]
    assert kinds.index("NetworkPolicy") < kinds.index("Deployment")
