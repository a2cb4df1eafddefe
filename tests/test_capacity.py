"""The GPU capacity check: advisory by default (the pods are created, so a node pool that scales from
zero sees them), refusing the spec in strict mode; Degraded names the reason either way."""

import pytest
from fakekube import FakeKube, gpu_node, pxd
from pixtral_operator.capacity import ADVISORY_NOTE, gpu_findings, gpu_verdict
from pixtral_operator.conditions import find
from pixtral_operator.reconcile import reconcile
from pixtral_operator.settings import OperatorSettings
from pixtral_operator.spec import parse

NODES = [gpu_node("gpu-0", gpus=4), gpu_node("gpu-1", gpus=2, product="NVIDIA-L4")]


def spec(raw):
    return parse("demo", "team", raw)


@pytest.mark.parametrize(
    "raw, nodes, reasons",
    [
        ({"engine": {"tensorParallelSize": 4}}, NODES, []),
        ({"engine": {"tensorParallelSize": 8}}, NODES, ["InsufficientGPUsPerNode"]),
        # Only the matching nodes count: the L4 node has 2 GPUs.
        ({"engine": {"tensorParallelSize": 4}, "resources": {"gpuProduct": "NVIDIA-L4"}}, NODES, ["InsufficientGPUsPerNode"]),
        ({"engine": {"tensorParallelSize": 2}, "resources": {"gpuProduct": "NVIDIA-L4"}}, NODES, []),
        ({"resources": {"gpuProduct": "NVIDIA-B300"}}, NODES, ["GPUProductNotFound"]),
        # A pool that scales from zero: no GPU node at all.
        ({}, [], ["InsufficientGPUsPerNode"]),
        # The canary's degree counts too.
        ({"canary": {"weight": 5}, "engine": {"tensorParallelSize": 4}}, NODES, []),
    ],
)
def test_findings(raw, nodes, reasons):
    assert [f.reason for f in gpu_findings(spec(raw), nodes)] == reasons


def test_unparseable_allocatable_counts_as_no_gpu():
    node = {"metadata": {"name": "n"}, "status": {"allocatable": {"nvidia.com/gpu": "lots"}}}
    (finding,) = gpu_findings(spec({}), [node])
    assert "offers 0" in finding.message


def test_verdict_advisory_by_default_and_blocking_when_strict():
    s = spec({"engine": {"tensorParallelSize": 8}})
    advisory = gpu_verdict(s, NODES, strict=False)
    assert advisory.blocking == []
    assert [f.reason for f in advisory.advisory] == ["InsufficientGPUsPerNode"]
    assert advisory.advisory[0].message.endswith(ADVISORY_NOTE)
    strict = gpu_verdict(s, NODES, strict=True)
    assert strict.advisory == [] and [f.field for f in strict.blocking] == ["spec.engine.tensorParallelSize"]


def test_no_node_list_judges_nothing():
    assert gpu_verdict(spec({"engine": {"tensorParallelSize": 8}}), None, strict=True).blocking == []


def test_advisory_reconcile_creates_the_pods_and_warns():
    kube = FakeKube(nodes=[])  # GPU nodes appear only once pods ask for them
    out = reconcile(pxd(), kube, OperatorSettings(), now="t0")
    assert ("Deployment", "demo-stable") in kube.kinds_named()
    degraded = find(out.status["conditions"], "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "InsufficientGPUsPerNode")
    assert "advisory" in degraded["message"] and "PIXTRAL_STRICT_GPU_CHECK" in degraded["message"]
    assert find(out.status["conditions"], "Progressing")["reason"] == "RollingOut"
    assert any(e.type == "Warning" and e.reason == "InsufficientGPUsPerNode" for e in out.events)


def test_advisory_clears_when_the_node_pool_scaled_up():
    kube = FakeKube(nodes=[])
    body = pxd()
    reconcile(body, kube, OperatorSettings(), now="t0")
    kube.nodes = [gpu_node("gpu-new")]
    body["status"] = kube.statuses[("team", "demo")]
    out = reconcile(body, kube, OperatorSettings(), now="t1")
    degraded = find(out.status["conditions"], "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("False", "AsExpected")


def test_strict_reconcile_applies_nothing():
    kube = FakeKube(nodes=[])
    out = reconcile(pxd(), kube, OperatorSettings(strict_gpu_check=True), now="t0")
    assert kube.kinds_named() == set()
    assert find(out.status["conditions"], "Progressing")["reason"] == "SpecRejected"
    assert find(out.status["conditions"], "Degraded")["reason"] == "InsufficientGPUsPerNode"
