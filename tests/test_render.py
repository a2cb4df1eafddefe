"""Renderers: kinds, names, labels, owner references, GPU requests and the vLLM-relevant settings."""

import dataclasses
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


POD_MONITOR = dataclasses.replace(SETTINGS, monitoring="podmonitor")


def render(spec=None, replicas=None, settings=SETTINGS):
    s = parse("demo", "team", spec or {})
    reps = replicas or {t.track: t.replicas for t in s.tracks()}
    return {(o["kind"], o["metadata"]["name"]): o for o in desired_children(s, settings, OWNER, reps)}


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
    for obj in render({"canary": {"weight": 10, "engine": {"image": "x:2"}}}, settings=POD_MONITOR).values():
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


def test_monitor_object_only_in_its_mode():
    assert not {k for k in render() if k[0].endswith("Monitor")}
    assert ("PodMonitor", "demo-runtime") in render(settings=POD_MONITOR)


def test_hash_is_stable_and_sensitive():
    a = render()[("Deployment", "demo-stable")]
    b = render()[("Deployment", "demo-stable")]
    c = render({"engine": {"maxNumSeqs": 3}})[("Deployment", "demo-stable")]
    h = L.SPEC_HASH_ANNOTATION
    assert a["metadata"]["annotations"][h] == b["metadata"]["annotations"][h]
    assert a["metadata"]["annotations"][h] != c["metadata"]["annotations"][h]
    assert spec_hash({"a": 1, "b": 2}) == spec_hash({"b": 2, "a": 1})


# --- the Prometheus Operator path: the PodMonitor's relabelings give the samples exactly the labels
# the default autoscaler queries select (operator/prometheus.py)

import re  # noqa: E402

import pytest  # noqa: E402
from pixtral_operator import prometheus as P  # noqa: E402
from pixtral_operator.render import policy  # noqa: E402


def _relabel(labels, rules):
    """Prometheus' `keep` and `replace` actions (regex (.*) and $1 by default; a label whose new value
    is empty is dropped). None: the target is dropped."""
    labels = dict(labels)
    for rule in rules:
        value = ";".join(labels.get(name, "") for name in rule["sourceLabels"])
        match = re.fullmatch(rule.get("regex", "(.*)"), value)
        if rule["action"] == "keep":
            if not match:
                return None
            continue
        assert rule["action"] == "replace"
        if match:
            result = match.expand(rule.get("replacement", "$1").replace("$1", r"\1"))
            if result:
                labels[rule["targetLabel"]] = result
            else:
                labels.pop(rule["targetLabel"], None)
    return labels


def _targets(monitor, pod_template):
    """The target labels of one pod, per endpoint that scrapes it: what the Prometheus Operator always
    sets (namespace, pod, job, instance, container), then the endpoint's relabelings; `__` labels are
    dropped after relabeling. An endpoint scrapes only pods with a container port of its name."""
    ports = {p["name"]: p["containerPort"] for c in pod_template["spec"]["containers"] for p in c["ports"]}
    meta = {policy.prometheus_pod_label(k): v for k, v in pod_template["metadata"]["labels"].items()}
    meta |= {"namespace": "team", "pod": "pod-0", "job": "team/demo-runtime", "container": "c"}
    out = []
    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        if endpoint["port"] not in ports:
            continue
        labels = _relabel({**meta, "instance": f"10.0.0.1:{ports[endpoint['port']]}"}, endpoint["relabelings"])
        if labels is not None:
            out.append(({k: v for k, v in labels.items() if not k.startswith("__")}, ports[endpoint["port"]]))
    return out


def _scraped(series, target):
    """honor_labels false: a series label the target also has moves to exported_<name>."""
    out = dict(target)
    for name, value in series.items():
        out[f"exported_{name}" if name in target else name] = value
    return out


def _matchers(query):
    """label -> (op, value) of a query's first selector."""
    selector = re.search(r"\{([^}]*)\}", query).group(1)
    return {m.group(1): (m.group(2), m.group(3)) for m in re.finditer(r'(\w+)(=~|=)"([^"]*)"', selector)}


def _selects(matchers, labels):
    for name, (op, value) in matchers.items():
        if name == "__name__":
            continue
        have = labels.get(name, "")
        if (op == "=" and have != value) or (op == "=~" and not re.fullmatch(value, have)):
            return False
    return True


def _monitored(spec=None):
    objs = render(spec, settings=POD_MONITOR)
    return objs, objs[("PodMonitor", "demo-runtime")]


def test_relabeled_runtime_samples_carry_exactly_the_labels_the_queries_select():
    objs, monitor = _monitored({"canary": {"weight": 10}})
    assert "podTargetLabels" not in monitor["spec"]
    for track in ("stable", "canary"):
        pod = objs[("Deployment", f"demo-{track}")]["spec"]["template"]
        ((labels, port),) = _targets(monitor, pod)  # one endpoint scrapes it, on vLLM's port
        assert port == L.RUNTIME_HTTP_PORT
        engine = _matchers(P.default_queries("team", "demo", track).engine_load)
        selected = {k for k in engine if k != "__name__"}
        assert selected == {"namespace", "deployment", "track"}
        assert {k: labels[k] for k in selected} == {"namespace": "team", "deployment": "demo", "track": track}
        assert _selects(engine, labels)
        assert not [k for k in labels if k.startswith("serving_pixtral_dev")]
        other = "canary" if track == "stable" else "stable"
        assert not _selects(_matchers(P.default_queries("team", "demo", other).engine_load), labels)


def test_relabeled_router_samples_keep_the_routers_own_track():
    objs, monitor = _monitored()
    router_pod = objs[("Deployment", "demo-router")]["spec"]["template"]
    ((target, port),) = _targets(monitor, router_pod)  # the metrics port only, not the tenant port
    assert port == L.ROUTER_METRICS_PORT
    assert "track" not in target and target["deployment"] == "demo"
    for track in ("stable", "canary"):
        sample = _scraped({"deployment": "demo", "track": track}, target)
        assert _selects(_matchers(P.default_queries("team", "demo", track).router_pending), sample)


def test_monitor_scrapes_the_ports_the_annotations_name():
    annotated = render({"canary": {"weight": 10}})
    objs, monitor = _monitored({"canary": {"weight": 10}})
    for name in ("demo-stable", "demo-canary", "demo-router"):
        template = objs[("Deployment", name)]["spec"]["template"]
        assert monitor["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
        ((_, port),) = _targets(monitor, template)
        assert str(port) == annotated[("Deployment", name)]["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"]


def test_the_monitor_scrapes_at_the_configured_interval():
    settings = dataclasses.replace(POD_MONITOR, monitor_interval="1s")
    endpoints = render(settings=settings)[("PodMonitor", "demo-runtime")]["spec"]["podMetricsEndpoints"]
    assert [e["interval"] for e in endpoints] == ["1s", "1s"]


def test_selector_labels_from_the_settings_are_on_the_monitor():
    settings = dataclasses.replace(POD_MONITOR, monitor_labels=(("release", "kube-prometheus-stack"),))
    labels = render(settings=settings)[("PodMonitor", "demo-runtime")]["metadata"]["labels"]
    assert labels["release"] == "kube-prometheus-stack"
    assert labels[L.DEPLOYMENT_LABEL] == "demo"


@pytest.mark.parametrize("mode, annotated, monitors", [("annotations", True, set()), ("podmonitor", False, {"PodMonitor"})])
def test_annotations_or_a_monitor_object_never_both(mode, annotated, monitors):
    objs = render({"canary": {"weight": 10}}, settings=dataclasses.replace(SETTINGS, monitoring=mode))
    assert {kind for kind, _ in objs if kind.endswith("Monitor")} == monitors
    deployments = [o for (kind, _), o in objs.items() if kind == "Deployment"]
    assert len(deployments) == 3
    for obj in deployments:
        annotations = obj["spec"]["template"]["metadata"].get("annotations") or {}
        assert ("prometheus.io/scrape" in annotations) is annotated


def test_the_multimodal_cache_is_sized_from_the_pods_memory():
    from pixtral_operator.render.runtime import mm_processor_cache_gib, quantity_bytes

    # At most 1/8 of the pod's memory (one copy, in the engine core), capped at vLLM's default of
    # 4 GiB, rounded down to 1/16 GiB; below 1/2 GiB of memory the cache is off.
    assert mm_processor_cache_gib("48Gi") == 4.0
    assert mm_processor_cache_gib("8Gi") == 1.0
    assert mm_processor_cache_gib("256Gi") == 4.0
    assert mm_processor_cache_gib("20G") == 2.3125
    assert mm_processor_cache_gib("1Gi") == 0.125
    assert mm_processor_cache_gib("448Mi") == 0.0
    assert quantity_bytes("1e9") == 1e9 and quantity_bytes("512Mi") == 512 * 2**20
    (container,) = render({"resources": {"memory": "16Gi"}})[("Deployment", "demo-stable")]["spec"]["template"]["spec"]["containers"]
    assert env_of(container)["PIXTRAL_MM_PROCESSOR_CACHE_GB"] == "2"
