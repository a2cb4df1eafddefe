"""The GPU capacity check: does any node offer what one runtime pod asks for?

Pure: the nodes are an input. A cluster whose GPU node pool scales from zero (cluster-autoscaler,
Karpenter) has no such node until a pending pod asks for one, so by default a finding is advisory:
the pods are still created (the node autoscaler reacts to them) and the finding is reported as a
Warning Event and the Degraded condition's reason. In strict mode (`PIXTRAL_STRICT_GPU_CHECK`,
docs/settings.md) a finding refuses the spec like any other spec problem."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from pixtral_operator.spec import PixtralSpec, SpecProblem

GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"

ADVISORY_NOTE = (
    " (advisory: the pods are created so that an autoscaled node pool can add such a node; "
    "the operator setting PIXTRAL_STRICT_GPU_CHECK=true refuses the spec instead)"
)


@dataclasses.dataclass(frozen=True)
class CapacityVerdict:
    blocking: list[SpecProblem]  # refuse the spec: nothing is applied
    advisory: list[SpecProblem]  # report, but apply the children


def _labels(node: Mapping[str, Any]) -> Mapping[str, str]:
    return (node.get("metadata") or {}).get("labels") or {}


def gpus_of(node: Mapping[str, Any]) -> int:
    alloc = (node.get("status") or {}).get("allocatable") or {}
    try:
        return int(str(alloc.get(GPU_RESOURCE, "0")))
    except ValueError:
        return 0


def gpu_findings(spec: PixtralSpec, nodes: Sequence[Mapping[str, Any]]) -> list[SpecProblem]:
    """What the listed nodes cannot host: no node with spec.resources.gpuProduct, or none with the
    tensor-parallel degree's GPUs."""
    candidates = [n for n in nodes if not spec.gpu_product or _labels(n).get(GPU_PRODUCT_LABEL) == spec.gpu_product]
    if spec.gpu_product and not candidates:
        products = sorted({_labels(n).get(GPU_PRODUCT_LABEL, "?") for n in nodes})
        return [
            SpecProblem(
                "spec.resources.gpuProduct",
                "GPUProductNotFound",
                f"spec.resources.gpuProduct={spec.gpu_product!r}: no node has label {GPU_PRODUCT_LABEL} "
                f"with that value (found: {', '.join(products) or 'no GPU nodes'})",
            )
        ]
    most = max((gpus_of(n) for n in candidates), default=0)
    for track in spec.tracks():
        if track.tensor_parallel_size > most:
            field = "spec.engine.tensorParallelSize"
            return [
                SpecProblem(
                    field,
                    "InsufficientGPUsPerNode",
                    f"{field}={track.tensor_parallel_size} needs {track.tensor_parallel_size} {GPU_RESOURCE} "
                    f"on one node, but the largest{' matching' if spec.gpu_product else ''} node offers {most}",
                )
            ]
    return []


def gpu_verdict(spec: PixtralSpec, nodes: Sequence[Mapping[str, Any]] | None, *, strict: bool) -> CapacityVerdict:
    """`nodes` None means the operator may not list nodes: nothing is judged then."""
    findings = gpu_findings(spec, nodes) if nodes is not None else []
    if strict:
        return CapacityVerdict(blocking=findings, advisory=[])
    return CapacityVerdict(
        blocking=[],
        advisory=[dataclasses.replace(f, message=f.message + ADVISORY_NOTE) for f in findings],
    )
