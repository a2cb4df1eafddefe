"""Renderers: kinds, names, labels, owner references, GPU requests and the vLLM-relevant settings."""

import json

from pixtral_operator.render import desired_children, obsolete_children, spec_hash
from pixtral_operator.render import labels as L
from pixtral_operator.render.router import router_config
from pixtral_operator.settings import OperatorSettings
from pixtral_operator.spec import parse

SETTINGS = OperatorSettings(runtime_image="example/runtime:1", router_image="example/router:1")
OWNER = {
    "apiVersion": "serving.pixtral.dev/v1alpha1",
    "kind": "PixtralDeployment",
    "metadata": {"name": "demo", "namespace": "team", "uid": "uid-1"},
}


def render(spec=None, replicas=None, **kw):
    s = parse("demo", "team", spec or {})
    reps = replicas or {t.track: t.replicas for t in s.tracks()}
    return {(o["kind"], o["metadata"]["name"]): o for o in desired_children(s, SETTINGS, OWNER, reps, **kw)}


def env_of(container):
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_children_kinds_and_names():
    objs = render()
    assert set(objs) == {
        ("NetworkPolicy", "demo-runtime"),
        ("Service", "demo-stable"),
        ("Deployment", "demo-stable"),
        ("PodDisruptionBudget", "demo-runtime"),
        ("ConfigMap", "demo-router"),
        ("ServiceAccount", "demo-router"),
        ("Role", "demo-router"),
        ("RoleBinding", "demo-router"),
        ("Deployment", "demo-router"),
        ("Service", "demo-router"),
    }


def test_every_child_is_owned_labelled_and_hashed():
    for obj in render({"canary": {"weight": 10, "engine": {"image": "x:2"}}}, service_monitor_available=True).values():
        meta = obj["metadata"]
        assert meta["namespace"] == "team"
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "serving.pixtral.dev/v1alpha1",
                "kind": "PixtralDeployment",
                "name": "demo",
                "uid": "uid-1",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert meta["labels"][L.DEPLOYMENT_LABEL] == "demo"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "pixtral-operator"
        assert len(meta["annotations"][L.SPEC_HASH_ANNOTATION]) == 16


def test_runtime_deployment_requests_gpus_and_renders_vllm_settings():
    dep = render({"engine": {"tensorParallelSize": 4, "imagesPerPrompt": 6, "maxModelLen": 65536, "maxNumSeqs": 12}})[
        ("Deployment", "demo-stable")
    ]
    pod = dep["spec"]["template"]
    assert pod["metadata"]["labels"][L.TRACK_LABEL] == "stable"
    assert dep["spec"]["selector"]["matchLabels"] == {
        L.DEPLOYMENT_LABEL: "demo",
        L.TRACK_LABEL: "stable",
        L.COMPONENT_LABEL: "runtime",
    }
    (container,) = pod["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
    # CPU is requested, never limited (a CFS quota throttles the engine's threads).
    assert "cpu" in container["resources"]["requests"] and "cpu" not in container["resources"]["limits"]
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "4"
    assert container["command"] == ["pixtral-runtime", "serve"]
    assert container["image"] == "example/runtime:1"
    env = env_of(container)
    assert env["PIXTRAL_TENSOR_PARALLEL_SIZE"] == "4"
    assert env["PIXTRAL_IMAGES_PER_PROMPT"] == "6"
    assert env["PIXTRAL_MAX_MODEL_LEN"] == "65536"
    assert env["PIXTRAL_MAX_NUM_SEQS"] == "12"
    assert env["PIXTRAL_MODEL"] == "mistralai/Pixtral-12B-2409"
    assert env["PIXTRAL_SERVED_MODEL_NAME"] == "demo"
    assert env["PIXTRAL_HOST"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    # vLLM-relevant probes and draining: a model that loads for minutes and drains on SIGTERM.
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 1200
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    assert grace > int(env["PIXTRAL_DRAIN_TIMEOUT_SECONDS"]) >= 600
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "8000"


def test_model_sources_mount_the_weights():
    dep = render({"model": {"source": {"hostPath": {"path": "/data/tiny"}}}})[("Deployment", "demo-stable")]
    pod = dep["spec"]["template"]["spec"]
    assert {"name": "model", "hostPath": {"path": "/data/tiny", "type": "Directory"}} in pod["volumes"]
    assert env_of(pod["containers"][0])["PIXTRAL_MODEL"] == "/models/pixtral"
    dep = render({"model": {"source": {"pvc": {"claimName": "weights", "subPath": "pixtral"}}}})[("Deployment", "demo-stable")]
    mounts = dep["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert {"name": "model", "mountPath": "/models/pixtral", "readOnly": True, "subPath": "pixtral"} in mounts
    dep = render({"model": {"source": {"hub": {"tokenSecretRef": {"name": "hf"}}}}})[("Deployment", "demo-stable")]
    env = env_of(dep["spec"]["template"]["spec"]["containers"][0])
    assert env["HF_TOKEN"] == {"secretKeyRef": {"name": "hf", "key": "token"}}


def test_user_env_cannot_override_managed_env():
    dep = render({"engine": {"env": [{"name": "PIXTRAL_TENSOR_PARALLEL_SIZE", "value": "8"}, {"name": "X", "value": "1"}]}})[
        ("Deployment", "demo-stable")
    ]
    env = env_of(dep["spec"]["template"]["spec"]["containers"][0])
    assert env["PIXTRAL_TENSOR_PARALLEL_SIZE"] == "1" and env["X"] == "1"


def test_gpu_product_and_scheduling():
    dep = render(
        {
            "resources": {"gpuProduct": "NVIDIA-H100-80GB-HBM3"},
            "scheduling": {"nodeSelector": {"pool": "gpu"}, "priorityClassName": "inference"},
        }
    )[("Deployment", "demo-stable")]
    pod = dep["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "gpu", "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["priorityClassName"] == "inference"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]


def test_canary_track_gets_its_own_deployment_and_service():
    spec = {
        "engine": {"image": "r:1", "extraArgs": ["--enforce-eager"], "imagesPerPrompt": 4},
        "canary": {"weight": 20, "replicas": 2, "stickyHeader": "x-session-id", "engine": {"image": "r:2", "imagesPerPrompt": 2}},
    }
    objs = render(spec)
    canary = objs[("Deployment", "demo-canary")]
    assert canary["spec"]["replicas"] == 2
    container = canary["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "r:2"
    assert env_of(container)["PIXTRAL_EXTRA_ARGS"] == json.dumps(["--enforce-eager"])
    assert objs[("Service", "demo-canary")]["spec"]["selector"][L.TRACK_LABEL] == "canary"
    config = json.loads(objs[("ConfigMap", "demo-router")]["data"]["config.json"])
    assert config["canary"] == {"weight": 20, "stickyHeader": "x-session-id"}
    assert set(config["tracks"]) == {"stable", "canary"}
    assert config["admission"]["imagesPerPrompt"] == 2  # the router admits for both tracks


def test_obsolete_children_when_canary_removed():
    assert obsolete_children(parse("demo", "team", {})) == [
        ("apps/v1", "Deployment", "demo-canary"),
        ("v1", "Service", "demo-canary"),
    ]
    assert obsolete_children(parse("demo", "team", {"canary": {"weight": 5}})) == []


def test_router_objects():
    objs = render({"router": {"replicas": 2, "apiKeysSecretRef": {"name": "keys"}, "tenants": [{"name": "a", "maxConcurrent": 3}]}})
    dep = objs[("Deployment", "demo-router")]
    assert dep["spec"]["replicas"] == 2
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "demo-router"
    assert pod["containers"][0]["command"] == ["pixtral-runtime", "router"]
    assert env_of(pod["containers"][0])["PIXTRAL_ROUTER_CONFIGMAP"] == "demo-router"
    assert objs[("Service", "demo-router")]["spec"]["ports"][0]["port"] == 80
    role = objs[("Role", "demo-router")]
    # The keys come as a volume: the router reads no Secret through the API.
    assert not [r for r in role["rules"] if "secrets" in r["resources"]]
    assert {"name": "api-keys", "secret": {"secretName": "keys", "defaultMode": 0o440}} in pod["volumes"]
    mount = {"name": "api-keys", "mountPath": "/etc/pixtral-router/api-keys", "readOnly": True}
    assert mount in pod["containers"][0]["volumeMounts"]
    assert env_of(pod["containers"][0])["PIXTRAL_ROUTER_API_KEYS_DIR"] == mount["mountPath"]
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"]
    config = json.loads(objs[("ConfigMap", "demo-router")]["data"]["config.json"])
    assert config["tenancy"]["apiKeysSecret"] == "keys"
    assert config["tenancy"]["tenants"] == {"a": {"maxConcurrent": 3}}
    assert config["tracks"] == {"stable": {"service": "demo-stable", "port": 8000}}


def test_router_config_defaults_match_settings_doc():
    config = router_config(parse("demo", "team", {}))
    assert config["admission"] == {
        "imagesPerPrompt": 4,
        "maxImageBytes": 10485760,
        "maxImagePixels": 4194304,
        "allowedImageUrlSchemes": ["data"],
        "maxBodyBytes": 52428800,
    }
    assert config["overrideHeader"] == "x-pixtral-track"
    assert "apiKeysSecret" not in config["tenancy"]


def test_service_monitor_only_when_available():
    assert ("ServiceMonitor", "demo-runtime") not in render()
    assert ("ServiceMonitor", "demo-runtime") in render(service_monitor_available=True)


def test_hash_is_stable_and_sensitive():
    a = render()[("Deployment", "demo-stable")]
    b = render()[("Deployment", "demo-stable")]
    c = render({"engine": {"maxNumSeqs": 3}})[("Deployment", "demo-stable")]
    h = L.SPEC_HASH_ANNOTATION
    assert a["metadata"]["annotations"][h] == b["metadata"]["annotations"][h]
    assert a["metadata"]["annotations"][h] != c["metadata"]["annotations"][h]
    assert spec_hash({"a": 1, "b": 2}) == spec_hash({"b": 2, "a": 1})
