"""Specs against the real API server: the CRD's schema and CEL rules refuse bad PixtralDeployments
with a message naming the field; the samples are accepted; specs that only the operator can judge
become a Degraded condition with a clear reason and leave other PixtralDeployments untouched."""

from __future__ import annotations

import copy
import uuid
from pathlib import Path

import pytest
import yaml
from localcluster import wait_for
from pixtral_e2e import (
    ROOT,
    apply,
    condition,
    crds,
    get_pxd,
    operator,
    pxd_manifest,
    tiny_model,
    tiny_spec,
    wait_condition,
)

pytestmark = [pytest.mark.cluster]

BASE = {"model": {"source": {"hostPath": {"path": "/var/lib/pixtral/tiny"}}}}


def with_(path: str, value, base=None):
    spec = copy.deepcopy(base if base is not None else BASE)
    node = spec
    keys = path.split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
    return spec


INVALID = [
    ("tp-not-a-power", with_("engine.tensorParallelSize", 3), "spec.engine.tensorParallelSize"),
    ("max-model-len-too-big", with_("engine.maxModelLen", 200000), "spec.engine.maxModelLen"),
    ("image-limit-zero", with_("engine.imagesPerPrompt", 0), "spec.engine.imagesPerPrompt"),
    ("canary-weight-101", with_("canary.weight", 101), "spec.canary.weight"),
    ("canary-weight-negative", with_("canary.weight", -1), "spec.canary.weight"),
    ("min-above-max", with_("autoscaling", {"enabled": True, "minReplicas": 5, "maxReplicas": 2}),
     "spec.autoscaling.minReplicas must be less than or equal to spec.autoscaling.maxReplicas"),
    ("replicas-negative", with_("replicas", -1), "spec.replicas"),
    ("replicas-wrong-type", with_("replicas", "two"), "spec.replicas"),
    ("managed-extra-arg", with_("engine.extraArgs", ["--tensor-parallel-size=2"]), "spec.engine.extraArgs"),
    ("two-sources", with_("model.source", {"hostPath": {"path": "/w"}, "pvc": {"claimName": "w"}}), "spec.model.source"),
    ("unknown-field", with_("engine.turbo", True), "spec.engine.turbo"),
    ("relative-host-path", with_("model.source.hostPath.path", "models/tiny"), "spec.model.source.hostPath.path"),
    ("gpu-memory-over-1", with_("engine.gpuMemoryUtilization", 1.5), "spec.engine.gpuMemoryUtilization"),
    ("router-zero-replicas", with_("router.replicas", 0), "spec.router.replicas"),
    ("canary-more-images", with_("canary", {"weight": 5, "engine": {"imagesPerPrompt": 8}}), "spec.canary.engine.imagesPerPrompt"),
    ("target-queue-zero", with_("autoscaling.targetQueuePerReplica", 0), "spec.autoscaling.targetQueuePerReplica"),
    ("bad-toleration-operator", with_("scheduling.tolerations", [{"key": "a", "operator": "Maybe"}]), "spec.scheduling.tolerations[0].operator"),
    ("remote-scheme-ftp", with_("router.allowedImageUrlSchemes", ["ftp"]), "spec.router.allowedImageUrlSchemes[0]"),
    ("max-num-seqs-wrong-type", with_("engine.maxNumSeqs", "lots"), "spec.engine.maxNumSeqs"),
    ("duplicate-tenant", with_("router.tenants", [{"name": "a"}, {"name": "a"}]), "spec.router.tenants[1]"),
    ("served-name-with-space", with_("model.servedModelName", "my model"), "spec.model.servedModelName"),
    # Names: every child name `<name>-<suffix>` must be a DNS-1035 label of at most 63 characters.
    ("name-too-long", BASE, "metadata.name may have at most 55 characters"),
    ("name-with-dot", BASE, "metadata.name must be a DNS-1035 label"),
    ("name-starts-with-digit", BASE, "metadata.name must be a DNS-1035 label"),
    # Environment variables the operator sets itself (a duplicate key of the pod's env).
    ("env-hf-home", with_("engine.env", [{"name": "HF_HOME", "value": "/x"}]), "spec.engine.env[0].name"),
    ("env-operator-setting", with_("engine.env", [{"name": "A", "value": "1"}, {"name": "PIXTRAL_MAX_NUM_SEQS", "value": "9"}]),
     "spec.engine.env[1].name"),
    ("canary-env-cache", with_("canary", {"weight": 5, "engine": {"env": [{"name": "TORCHINDUCTOR_CACHE_DIR", "value": "/x"}]}}),
     "spec.canary.engine.env[0].name"),
    # Managed flags in every spelling vLLM accepts, on both tracks.
    ("extra-arg-underscores", with_("engine.extraArgs", ["--max_model_len", "4096"]), "spec.engine.extraArgs"),
    ("extra-arg-prefix", with_("engine.extraArgs", ["--tensor-par=2"]), "spec.engine.extraArgs"),
    ("extra-arg-short-alias", with_("engine.extraArgs", ["-tp", "2"]), "spec.engine.extraArgs"),
    ("extra-arg-dotted-key", with_("engine.extraArgs", ["--limit-mm-per-prompt.image", "9"]), "spec.engine.extraArgs"),
    ("canary-managed-extra-arg", with_("canary", {"weight": 5, "engine": {"extraArgs": ["--served-model-name=x"]}}),
     "spec.canary.engine.extraArgs"),
    # The canary's source has stable's shape and rules.
    ("canary-two-sources", with_("canary", {"weight": 5, "model": {"source": {"hostPath": {"path": "/w"}, "hub": {}}}}),
     "spec.canary.model.source"),
    ("canary-relative-host-path", with_("canary", {"weight": 5, "model": {"source": {"hostPath": {"path": "w"}}}}),
     "spec.canary.model.source.hostPath.path"),
    ("canary-unknown-source", with_("canary", {"weight": 5, "model": {"source": {"s3": {"bucket": "w"}}}}),
     "spec.canary.model.source.s3"),
    ("canary-empty-claim", with_("canary", {"weight": 5, "model": {"source": {"pvc": {"claimName": ""}}}}),
     "spec.canary.model.source.pvc.claimName"),
    # Quantities: the Kubernetes syntax, positive.
    ("cpu-words", with_("resources.cpu", "4 cores"), "spec.resources.cpu"),
    ("cpu-zero", with_("resources.cpu", 0), "spec.resources.cpu"),
    ("memory-negative", with_("resources.memory", "-1Gi"), "spec.resources.memory"),
    ("memory-wrong-suffix", with_("resources.memory", "48GB"), "spec.resources.memory"),
]

# The cases that test the name carry their own; every other case is named bad-<case>.
NAMES = {
    "name-too-long": "a" * 56,
    "name-with-dot": "bad.dotted",
    "name-starts-with-digit": "1bad",
}

# At the edge of each rule above, and accepted.
VALID = [
    ("name-55-characters", "a" * 55, BASE),
    ("quantities", "quantities", with_("resources", {"cpu": "500m", "memory": 4294967296})),
    ("decimal-quantities", "decimal-quantities", with_("resources", {"cpu": "0.5", "memory": "1.5Gi"})),
    ("unmanaged-flags", "unmanaged-flags", with_("engine.extraArgs", ["--dtype", "bfloat16", "--tokenizer", "t", "--config", "c",
                                                                       "--max-num-batched-tokens=8192", "-1"])),
    ("unmanaged-env", "unmanaged-env", with_("engine.env", [{"name": "HF_HUB_OFFLINE", "value": "1"}, {"name": "PIXTRAL_LOG_LEVEL", "value": "debug"}])),
    ("canary-own-source", "canary-own-source", with_("canary", {"weight": 5, "model": {"source": {"pvc": {"claimName": "w2"}}},
                                                                "engine": {"extraArgs": ["--enforce-eager"]}})),
]


@pytest.fixture(scope="module")
def dry_run_ns(cluster, crds):
    """One namespace for every dry run: nothing is created in it, so tests need no fresh one."""
    name = f"specs-dry-run-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false")


def test_table_has_at_least_25_rules():
    assert len(INVALID) >= 25


@pytest.mark.parametrize("case, spec, field", INVALID, ids=[c[0] for c in INVALID])
def test_invalid_spec_is_refused_naming_the_field(cluster, dry_run_ns, case, spec, field):
    namespace = dry_run_ns
    manifest = pxd_manifest(NAMES.get(case, f"bad-{case}"), spec)
    result = cluster.kubectl("create", "--dry-run=server", "--validate=strict", "-n", namespace, "-f", "-",
                             input=yaml.safe_dump(manifest), check=False)
    assert result.returncode != 0, f"{case} was accepted"
    assert field in result.stderr, result.stderr


@pytest.mark.parametrize("case, name, spec", VALID, ids=[c[0] for c in VALID])
def test_spec_at_the_edge_of_a_rule_is_accepted(cluster, dry_run_ns, case, name, spec):
    result = cluster.kubectl("create", "--dry-run=server", "--validate=strict", "-n", dry_run_ns, "-f", "-",
                             input=yaml.safe_dump(pxd_manifest(name, spec)), check=False)
    assert result.returncode == 0, result.stderr


def test_missing_spec_is_refused(cluster, dry_run_ns):
    namespace = dry_run_ns
    manifest = {"apiVersion": "serving.pixtral.dev/v1alpha1", "kind": "PixtralDeployment", "metadata": {"name": "nospec"}}
    result = cluster.kubectl("create", "--dry-run=server", "-n", namespace, "-f", "-", input=yaml.safe_dump(manifest), check=False)
    assert result.returncode != 0 and "spec" in result.stderr


@pytest.mark.parametrize("sample", sorted((ROOT / "manifests" / "samples").glob("*.yaml")), ids=lambda p: p.name)
def test_samples_pass_server_dry_run(cluster, dry_run_ns, sample: Path):
    namespace = dry_run_ns
    result = cluster.kubectl("apply", "--dry-run=server", "--validate=strict", "-n", namespace, "-f", str(sample), check=False)
    assert result.returncode == 0, result.stderr


def test_defaults_are_applied_by_the_api_server(cluster, dry_run_ns):
    namespace = dry_run_ns
    manifest = pxd_manifest("defaults", BASE)
    out = cluster.kubectl("create", "--dry-run=server", "-n", namespace, "-o", "yaml", "-f", "-", input=yaml.safe_dump(manifest))
    spec = yaml.safe_load(out.stdout)["spec"]
    assert spec["engine"]["tensorParallelSize"] == 1
    assert spec["engine"]["imagesPerPrompt"] == 4
    assert spec["model"]["name"] == "mistralai/Pixtral-12B-2409"
    assert spec["autoscaling"]["enabled"] is False
    assert spec["router"]["allowedImageUrlSchemes"] == ["data"]


def test_operator_judged_specs_degrade_without_touching_others(cluster, namespace, operator, tiny_model):
    # A healthy neighbour with no runtime pods (replicas 0) so the test needs no engine.
    apply(cluster, namespace, pxd_manifest("neighbour", tiny_spec(tiny_model, replicas=0)))
    wait_for(lambda: (get_pxd(cluster, namespace, "neighbour") or {}).get("status", {}).get("observedGeneration") == 1,
             60, "the neighbour to be reconciled")
    # RolloutComplete, not ApplyFailed: an apply refused while the API server still maps the fresh CRD is retried.
    wait_condition(cluster, namespace, "neighbour", "Progressing", "False", 180, reason="RolloutComplete")
    neighbour_deps = {
        name: cluster.rest.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}")["metadata"]["resourceVersion"]
        for name in ("neighbour-stable", "neighbour-router")
    }
    neighbour_conditions = get_pxd(cluster, namespace, "neighbour")["status"]["conditions"]

    # (name, spec, reason, field, refused): the GPU capacity check is advisory by default (the children
    # are applied so that an autoscaled node pool can react); a missing reference refuses the spec.
    cases = [
        ("too-many-gpus", tiny_spec(tiny_model, replicas=0, engine={**tiny_spec(tiny_model)["engine"], "tensorParallelSize": 8}),
         "InsufficientGPUsPerNode", "spec.engine.tensorParallelSize=8", False),
        ("no-such-gpu", tiny_spec(tiny_model, replicas=0, resources={"gpuProduct": "NVIDIA-B300"}),
         "GPUProductNotFound", "spec.resources.gpuProduct", False),
        ("missing-secret", tiny_spec(tiny_model, replicas=0, router={"apiKeysSecretRef": {"name": "does-not-exist"}}),
         "SecretNotFound", "spec.router.apiKeysSecretRef.name", True),
        # The operator reads the claim under its own RBAC: a missing rule would be a 403, not this.
        ("missing-claim", tiny_spec("no-such-claim", replicas=0), "PersistentVolumeClaimNotFound",
         "spec.model.source.pvc.claimName", True),
    ]
    for name, spec, *_ in cases:
        apply(cluster, namespace, pxd_manifest(name, spec))
    for name, _, reason, field, refused in cases:
        obj = wait_condition(cluster, namespace, name, "Degraded", "True", 60, reason=reason)
        assert field in condition(obj, "Degraded")["message"]
        stable = cluster.rest.get_or_none(f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}-stable")
        if refused:
            # Nothing was created for a rejected spec.
            assert stable is None
        else:
            assert stable is not None, f"{name}: an advisory finding still applies the children"
            assert "advisory" in condition(obj, "Degraded")["message"]
        # The operator posts a reconcile's Events after its status patch: the Warning may come a moment later.
        wait_for(lambda name=name, reason=reason: reason in cluster.kubectl(
                     "get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={name},type=Warning").stdout,
                 30, f"a Warning Event {reason} on {name}")

    # The operator keeps running (never restarted) and the neighbour was not touched.
    (operator_pod,) = operator.pods()
    assert all(c["restartCount"] == 0 and c["ready"] for c in operator_pod["status"]["containerStatuses"]), operator_pod["status"]
    for dep, version in neighbour_deps.items():
        assert cluster.rest.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/{dep}")["metadata"]["resourceVersion"] == version
    assert get_pxd(cluster, namespace, "neighbour")["status"]["conditions"] == neighbour_conditions

    # Creating the Secret heals the spec without any edit.
    cluster.kubectl("create", "secret", "generic", "does-not-exist", "-n", namespace, "--from-literal=t=sk-x")
    wait_condition(cluster, namespace, "missing-secret", "Degraded", "False", 60)
