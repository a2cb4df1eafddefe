"""Pure parts of the local cluster (no cluster needed): path mapping, env, phases, Prometheus config."""

from __future__ import annotations

import pytest
from localcluster import podsd, podspec
from localcluster.podspec import PathMapping, SpecError
from localcluster.prometheus import ScrapeSettings, meta_label, render_config


@pytest.mark.parametrize("image, repository", [
    ("python:3.11-slim", "python"),
    ("registry.local:5000/team/pixtral-runtime:v1", "registry.local:5000/team/pixtral-runtime"),
    ("ghcr.io/x/pixtral-operator@sha256:abc", "ghcr.io/x/pixtral-operator"),
    ("busybox", "busybox"),
])
def test_image_repository_drops_tag_and_digest(image: str, repository: str) -> None:
    assert podspec.image_repository(image) == repository


@pytest.mark.parametrize("image, runnable", [
    ("ghcr.io/acme/pixtral-runtime:0.1.0", True), ("python:3.12", True), ("docker.io/library/busybox:1.36", True),
    ("vllm/vllm-openai:v0.6.0", False), ("nginx", False), ("mypython:1", False),
])
def test_default_runnable_rule(image: str, runnable: bool) -> None:
    assert podspec.image_runnable(image, podspec.DEFAULT_RUNNABLE_IMAGES) is runnable


def test_rewrite_paths_only_whole_mount_prefixes() -> None:
    mappings = podspec.path_mappings("/state/pod/rootfs/c", {"volumeMounts": [
        {"name": "m", "mountPath": "/models/pixtral"}, {"name": "sa", "mountPath": "/models"}]})
    assert mappings[0] == PathMapping("/models/pixtral", "/state/pod/rootfs/c/models/pixtral")
    rewrite = lambda text: podspec.rewrite_paths(text, mappings)  # noqa: E731
    assert rewrite("/models/pixtral") == "/state/pod/rootfs/c/models/pixtral"
    assert rewrite("--model=/models/pixtral/x.json") == "--model=/state/pod/rootfs/c/models/pixtral/x.json"
    assert rewrite("/models/other") == "/state/pod/rootfs/c/models/other"
    assert rewrite("/models2/a") == "/models2/a"
    assert rewrite("a/models/pixtral") == "a/models/pixtral"
    assert rewrite("echo hi > /models/out; cat /models") == (
        "echo hi > /state/pod/rootfs/c/models/out; cat /state/pod/rootfs/c/models")


def test_expand_references_follows_kubernetes_rules() -> None:
    env = {"A": "1", "B": "two"}
    assert podspec.expand_references("$(A)-$(B)-$(C)-$$(A)", env) == "1-two-$(C)-$(A)"


def test_container_env_resolves_every_source() -> None:
    pod = {"metadata": {"name": "p", "namespace": "ns", "labels": {"app": "web"}}, "spec": {"nodeName": "n1"}}
    container = {
        "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CM_"}, {"secretRef": {"name": "gone", "optional": True}}],
        "env": [
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
            {"name": "URL", "value": "http://$(IP):8000"},
            {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
        ],
        "resources": {"limits": {"memory": "2Gi"}},
    }
    configmaps = {"cm": {"x": "1"}}
    secrets = {"s": {"k": b"secret"}}
    env = podspec.container_env(container, pod, "127.0.10.2", "127.0.0.1", configmaps.get, secrets.get)
    assert env == {"CM_x": "1", "IP": "127.0.10.2", "NAME": "p", "APP": "web", "KEY": "secret",
                   "URL": "http://127.0.10.2:8000", "MEM": "2048"}


def test_missing_secret_is_a_clear_error() -> None:
    container = {"env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}}]}
    with pytest.raises(SpecError, match='secret "nope" not found'):
        podspec.container_env(container, {"metadata": {}}, "ip", "host", {}.get, {}.get)


@pytest.mark.parametrize("policy, init_pending, states, phase", [
    ("Always", True, ["waiting"], "Pending"),
    ("Always", False, ["running", "restarting"], "Running"),
    ("Always", False, ["restarting"], "Running"),
    ("Never", False, [0, 0], "Succeeded"),
    ("Never", False, [0, 1], "Failed"),
    ("OnFailure", False, [0], "Succeeded"),
    ("Always", False, ["waiting", "running"], "Pending"),
])
def test_pod_phase(policy: str, init_pending: bool, states: list, phase: str) -> None:
    assert podspec.pod_phase(policy, init_pending, False, states) == phase


def test_restart_delay_doubles_up_to_the_cap() -> None:
    assert [podspec.restart_delay(n, 1.0, 5.0) for n in range(1, 7)] == [0.0, 1.0, 2.0, 4.0, 5.0, 5.0]


def test_prometheus_config_keeps_deployment_and_track() -> None:
    config = render_config(ScrapeSettings("http://127.0.0.1:9999/targets"))
    job = config["scrape_configs"][0]
    assert config["global"]["scrape_interval"] == "1s"
    assert job["http_sd_configs"][0]["url"] == "http://127.0.0.1:9999/targets"
    targets = {r.get("target_label"): r.get("source_labels") for r in job["relabel_configs"]}
    assert targets["deployment"] == ["__meta_kubernetes_pod_label_serving_pixtral_dev_deployment"]
    assert targets["track"] == [meta_label("serving.pixtral.dev/track")]
    assert targets["namespace"] == ["__meta_kubernetes_namespace"]


def test_pod_discovery_matches_kubernetes_sd_role_pod() -> None:
    pod = {"metadata": {"name": "p", "namespace": "ns", "uid": "u", "labels": {"serving.pixtral.dev/track": "canary"},
                        "annotations": {"prometheus.io/port": "8000"},
                        "ownerReferences": [{"kind": "ReplicaSet", "name": "rs", "controller": True}]},
           "spec": {"nodeName": "n", "containers": [
               {"name": "a", "ports": [{"name": "http", "containerPort": 8000}, {"containerPort": 8081}]},
               {"name": "b"}]},
           "status": {"podIP": "127.0.10.2", "phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}
    unscheduled = {"metadata": {"name": "q", "namespace": "ns"}, "spec": {"containers": [{"name": "a"}]}, "status": {}}
    groups = podsd.target_groups([pod, unscheduled])
    assert [g["targets"] for g in groups] == [["127.0.10.2:8000"], ["127.0.10.2:8081"], ["127.0.10.2"]]
    labels = groups[0]["labels"]
    assert labels["__meta_kubernetes_pod_label_serving_pixtral_dev_track"] == "canary"
    assert labels["__meta_kubernetes_pod_annotation_prometheus_io_port"] == "8000"
    assert labels["__meta_kubernetes_pod_ready"] == "true" and labels["__meta_kubernetes_pod_phase"] == "Running"
    assert labels["__meta_kubernetes_pod_controller_kind"] == "ReplicaSet"
    assert labels["__meta_kubernetes_pod_container_port_name"] == "http"


def test_log_requests_follow_the_kubelet_api() -> None:
    assert podspec.parse_log_request("/containerLogs/ns/p/c", {"tailLines": ["2"], "follow": ["true"]}) == (
        "ns", "p", "c", 2, True, None)
    with pytest.raises(ValueError, match="tailLines"):
        podspec.parse_log_request("/containerLogs/ns/p/c", {"tailLines": ["-1"]})
    with pytest.raises(ValueError, match="not a container log path"):
        podspec.parse_log_request("/exec/ns/p/c", {})
    assert podspec.tail(b"a\nb\nc\n", 2, None) == b"b\nc\n"
    assert podspec.tail(b"a\nb\nc\n", None, 3) == b"a\nb"
