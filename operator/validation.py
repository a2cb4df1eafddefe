"""The operator's own check of what the CRD refuses, for objects stored before the CRD had a rule.

The API server refuses these specs when the current CRD is installed (manifests/crds/, rules of the
same names); a PixtralDeployment written under an older CRD is still in etcd and reaches the
operator unchanged. Each rule here matches one rule of the schema, and tests/test_crd.py ties the
constants to the CRD's text and to the renderers."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from pixtral_operator.canary_analysis import Policy, PolicyError
from pixtral_operator.spec import SpecProblem
from pixtral_runtime.router.config import OTLP_PROTOCOLS
from pixtral_runtime.supervisor.command import conflicting_managed_flag

# Kubernetes names a Service (and so each track's and the router's) with a DNS-1035 label of at
# most 63 characters. The longest suffix the operator appends is "-runtime" (PodDisruptionBudget,
# NetworkPolicy), so the PixtralDeployment's own name may have 63 - 8 characters.
DNS_LABEL_MAX = 63
MAX_NAME_LENGTH = 55
DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

# Environment variables the operator sets on the runtime container (operator/render/runtime.py):
# the supervisor's settings and the writable cache folders of a read-only root filesystem. A user
# entry of the same name would be a duplicate key of the pod's env list.
OPERATOR_ENV_NAMES = (
    "PIXTRAL_MODEL",
    "PIXTRAL_SERVED_MODEL_NAME",
    "PIXTRAL_TENSOR_PARALLEL_SIZE",
    "PIXTRAL_IMAGES_PER_PROMPT",
    "PIXTRAL_MAX_MODEL_LEN",
    "PIXTRAL_GPU_MEMORY_UTILIZATION",
    "PIXTRAL_MAX_NUM_SEQS",
    "PIXTRAL_MM_PROCESSOR_CACHE_GB",
    "PIXTRAL_EXTRA_ARGS",
    "PIXTRAL_HOST",
    "PIXTRAL_VLLM_PORT",
    "PIXTRAL_HEALTH_PORT",
    "PIXTRAL_DRAIN_TIMEOUT_SECONDS",
    "PIXTRAL_MODEL_REVISION",
    "VLLM_API_KEY",
    "HF_TOKEN",
    "HOME",
    "TMPDIR",
    "HF_HOME",
    "VLLM_CACHE_ROOT",
    "TORCHINDUCTOR_CACHE_DIR",
    # spec.tracing (operator/render/tracing.py)
    "PIXTRAL_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
)

# resource.Quantity's syntax (k8s.io/apimachinery), without the sign: a request must be positive.
QUANTITY = re.compile(
    r"^\+?(?P<number>[0-9]+(\.[0-9]*)?|\.[0-9]+)"
    r"(?P<suffix>[KMGTPE]i|[numkMGTPE]|[eE][+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+))?$"
)


def name_problems(name: str) -> list[SpecProblem]:
    if len(name) > MAX_NAME_LENGTH:
        return [
            SpecProblem(
                "metadata.name",
                "NameTooLong",
                f"metadata.name {name!r} has {len(name)} characters, at most {MAX_NAME_LENGTH} are allowed: "
                f"child names such as {name}-runtime must fit a {DNS_LABEL_MAX}-character DNS label",
            )
        ]
    if not DNS_1035_LABEL.match(name):
        return [
            SpecProblem(
                "metadata.name",
                "InvalidName",
                f"metadata.name {name!r} must be a DNS-1035 label (lower-case letters, digits and '-', starting "
                "with a letter and ending with a letter or digit): it names the child Services",
            )
        ]
    return []


def is_positive_quantity(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value > 0
    if not isinstance(value, str):
        return False
    match = QUANTITY.match(value)
    return bool(match) and float(match.group("number")) > 0


def _source_problems(field: str, source: Any) -> Iterator[SpecProblem]:
    if not isinstance(source, Mapping):
        yield SpecProblem(field, "InvalidSource", f"{field} must be an object with one of hostPath, pvc or hub")
        return
    unknown = sorted(set(source) - {"hostPath", "pvc", "hub"})
    if unknown:
        yield SpecProblem(field, "InvalidSource", f"{field}: unknown field(s) {', '.join(unknown)}; use hostPath, pvc or hub")
    kinds = [k for k in ("hostPath", "pvc", "hub") if k in source]
    if len(kinds) > 1:
        yield SpecProblem(field, "InvalidSource", f"{field} must set at most one of hostPath, pvc or hub (found {', '.join(kinds)})")
    host = source.get("hostPath")
    if host is not None:
        path = host.get("path") if isinstance(host, Mapping) else None
        if not isinstance(path, str) or not path.startswith("/"):
            yield SpecProblem(f"{field}.hostPath.path", "InvalidSource", f"{field}.hostPath.path must be an absolute path, got {path!r}")
    pvc = source.get("pvc")
    if pvc is not None:
        claim = pvc.get("claimName") if isinstance(pvc, Mapping) else None
        if not isinstance(claim, str) or not claim:
            yield SpecProblem(f"{field}.pvc.claimName", "InvalidSource", f"{field}.pvc.claimName must name a PersistentVolumeClaim")
    hub = source.get("hub")
    if hub is not None:
        token = hub.get("tokenSecretRef") if isinstance(hub, Mapping) else {}
        if token is not None and not (isinstance(token, Mapping) and isinstance(token.get("name"), str) and token["name"]):
            yield SpecProblem(f"{field}.hub.tokenSecretRef.name", "InvalidSource", f"{field}.hub.tokenSecretRef.name must name a Secret")


def _extra_args_problems(field: str, args: Any) -> Iterator[SpecProblem]:
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        yield SpecProblem(field, "InvalidExtraArgs", f"{field} must be a list of strings")
        return
    for i, arg in enumerate(args):
        flag = conflicting_managed_flag(arg)
        if flag is not None:
            yield SpecProblem(
                f"{field}[{i}]",
                "ManagedExtraArg",
                f"{field}[{i}]={arg!r} would set {flag}, which the operator manages: use the spec field",
            )


def _env_problems(field: str, env: Any) -> Iterator[SpecProblem]:
    if not isinstance(env, list):
        yield SpecProblem(field, "InvalidEnv", f"{field} must be a list of {{name, value}} entries")
        return
    for i, entry in enumerate(env):
        name = entry.get("name") if isinstance(entry, Mapping) else None
        if name in OPERATOR_ENV_NAMES:
            yield SpecProblem(
                f"{field}[{i}].name",
                "ReservedEnvName",
                f"{field}[{i}].name={name!r} is set by the operator (set through the spec, or not at all)",
            )


# spec.tracing.endpoint: an http(s) URL with a host, no user info, query or fragment (the CRD's pattern).
TRACING_ENDPOINT = re.compile(r"^https?://[^/?#@\s]+(/[^?#@\s]*)?$")


def _tracing_problems(tracing: Any) -> Iterator[SpecProblem]:
    if not isinstance(tracing, Mapping):
        yield SpecProblem("spec.tracing", "InvalidTracing", "spec.tracing must be an object")
        return
    endpoint = tracing.get("endpoint")
    if endpoint is not None and (not isinstance(endpoint, str) or not TRACING_ENDPOINT.match(endpoint)):
        yield SpecProblem("spec.tracing.endpoint", "InvalidTracing",
                          f"spec.tracing.endpoint must be an http:// or https:// URL without credentials, query or "
                          f"fragment (e.g. http://otel-collector.observability:4317), got {str(endpoint)[:100]!r}")
    protocol = tracing.get("protocol", OTLP_PROTOCOLS[0])
    if protocol not in OTLP_PROTOCOLS:
        yield SpecProblem("spec.tracing.protocol", "InvalidTracing",
                          f"spec.tracing.protocol must be one of {', '.join(OTLP_PROTOCOLS)}, got {protocol!r}")
    ratio = tracing.get("samplingRatio", 1.0)
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 <= ratio <= 1:
        yield SpecProblem("spec.tracing.samplingRatio", "InvalidTracing",
                          f"spec.tracing.samplingRatio must be a number from 0 to 1, got {ratio!r}")


def spec_problems(name: str, spec: Mapping[str, Any]) -> list[SpecProblem]:
    """Pure: every rule of the CRD that an old object may break, each naming its field."""
    problems = name_problems(name)
    sections = [("spec.model", spec.get("model"), "spec.engine", spec.get("engine"))]
    canary = spec.get("canary")
    if isinstance(canary, Mapping):
        sections.append(("spec.canary.model", canary.get("model"), "spec.canary.engine", canary.get("engine")))
        if canary.get("analysis") is not None:
            try:
                Policy.from_spec(dict(canary["analysis"]))
            except (PolicyError, TypeError, ValueError) as error:
                problems.append(SpecProblem("spec.canary.analysis", "InvalidCanaryAnalysis", str(error)))
    for model_field, model, engine_field, engine in sections:
        if isinstance(model, Mapping) and "source" in model:
            problems += _source_problems(f"{model_field}.source", model["source"])
        if isinstance(engine, Mapping):
            if "extraArgs" in engine:
                problems += _extra_args_problems(f"{engine_field}.extraArgs", engine["extraArgs"])
            if "env" in engine:
                problems += _env_problems(f"{engine_field}.env", engine["env"])
    if spec.get("tracing") is not None:
        problems += _tracing_problems(spec["tracing"])
    resources = spec.get("resources")
    if isinstance(resources, Mapping):
        for key in ("cpu", "memory"):
            if key in resources and not is_positive_quantity(resources[key]):
                problems.append(
                    SpecProblem(
                        f"spec.resources.{key}",
                        "InvalidQuantity",
                        f"spec.resources.{key}={resources[key]!r} is not a positive Kubernetes quantity "
                        "(e.g. 4, 500m, 48Gi)",
                    )
                )
    return problems
