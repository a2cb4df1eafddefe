"""spec.tracing -> what the router (config.json) and the engines (environment) are told.

One endpoint, one protocol and one sampling ratio for both sides, so that a trace holds the
router's span and vLLM's `llm_request` under it. The router decides the sampling per trace ID;
vLLM's sampler is parent-based, so it follows the flag of the router's traceparent and uses the
same ratio only for requests sent to it directly (docs/operations.md, "Tracing").
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from pixtral_operator.spec import PixtralSpec, Tracing, TrackSpec

# OTLP/HTTP's path for traces; the OTLP/HTTP exporters take the full URL.
HTTP_TRACES_PATH = "/v1/traces"
RUNTIME_SERVICE_NAME = "pixtral-runtime"


def traces_endpoint(tracing: Tracing) -> str | None:
    """The URL the exporters are given: for http/protobuf the collector's base URL gets /v1/traces
    unless it names a path of its own; gRPC takes the address as it is."""
    if not tracing.endpoint:
        return None
    endpoint = tracing.endpoint
    if tracing.protocol == "http/protobuf" and urlsplit(endpoint).path in ("", "/"):
        return endpoint.rstrip("/") + HTTP_TRACES_PATH
    return endpoint


def router_tracing(spec: PixtralSpec) -> dict[str, Any]:
    """config.json's `tracing` (empty: off)."""
    endpoint = traces_endpoint(spec.tracing)
    if endpoint is None:
        return {}
    return {"endpoint": endpoint, "protocol": spec.tracing.protocol, "samplingRatio": spec.tracing.sampling_ratio}


def runtime_tracing_env(spec: PixtralSpec, track: TrackSpec) -> list[dict[str, Any]]:
    """The runtime container's variables for vLLM's tracer (none while tracing is off); their names
    are reserved in engine.env (validation.OPERATOR_ENV_NAMES)."""
    endpoint = traces_endpoint(spec.tracing)
    if endpoint is None:
        return []
    resource = f"k8s.namespace.name={spec.namespace},pixtral.deployment={spec.name},pixtral.track={track.track}"
    return [
        {"name": "PIXTRAL_OTLP_TRACES_ENDPOINT", "value": endpoint},
        {"name": "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "value": spec.tracing.protocol},
        {"name": "OTEL_SERVICE_NAME", "value": RUNTIME_SERVICE_NAME},
        {"name": "OTEL_RESOURCE_ATTRIBUTES", "value": resource},
        {"name": "OTEL_TRACES_SAMPLER", "value": "parentbased_traceidratio"},
        {"name": "OTEL_TRACES_SAMPLER_ARG", "value": f"{spec.tracing.sampling_ratio:g}"},
    ]
