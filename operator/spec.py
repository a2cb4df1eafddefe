"""Typed, defaulted view of a PixtralDeployment spec.

The API server applies the CRD's defaults, but the operator also sees objects written before a
default existed (and unit tests build specs by hand), so every default is repeated here once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from pixtral_operator.canary_analysis import Policy, PolicyError
from pixtral_runtime.router.config import TracingPolicy

GROUP = "serving.pixtral.dev"
VERSION = "v1alpha1"
PLURAL = "pixtraldeployments"
KIND = "PixtralDeployment"

DEFAULT_MODEL_NAME = "mistralai/Pixtral-12B-2409"
MODEL_MOUNT_PATH = "/models/pixtral"
TRACKS = ("stable", "canary")


@dataclasses.dataclass(frozen=True)
class SpecProblem:
    """A spec the operator will not render: `field` is the path the user has to change."""

    field: str
    reason: str
    message: str


@dataclasses.dataclass(frozen=True)
class ModelSource:
    host_path: str | None = None
    pvc_claim: str | None = None
    pvc_sub_path: str | None = None
    hub_token_secret: str | None = None
    hub_token_key: str = "token"

    @property
    def is_local(self) -> bool:
        return bool(self.host_path or self.pvc_claim)


@dataclasses.dataclass(frozen=True)
class TrackSpec:
    """Everything that can differ between the stable and the canary runtime pods."""

    track: str
    replicas: int
    model_name: str
    revision: str | None
    source: ModelSource
    image: str | None
    tensor_parallel_size: int
    max_model_len: int
    images_per_prompt: int
    gpu_memory_utilization: float
    max_num_seqs: int
    extra_args: tuple[str, ...]
    env: tuple[Mapping[str, Any], ...]


@dataclasses.dataclass(frozen=True)
class Autoscaling:
    enabled: bool = False
    min_replicas: int = 1
    max_replicas: int = 4
    target_queue_per_replica: int = 8
    max_scale_up_step: int = 4
    scale_up_window_seconds: int = 0
    scale_down_window_seconds: int = 300
    prometheus_query: str | None = None


# The defaults of spec.autoscaling, once (the CRD states the same ones for the API server).
_AUTOSCALING = Autoscaling()


@dataclasses.dataclass(frozen=True)
class Canary:
    weight: int
    replicas: int  # without autoscaling; resolved by canary_replicas()
    sticky_header: str | None
    min_replicas: int = 0  # the canary's autoscaler bounds; resolved by canary_bounds()
    max_replicas: int = 1
    # spec.canary.analysis: the weight then comes from status.canary (canary_state.effective_spec).
    analysis: Policy | None = None


def canary_replicas(weight: int, replicas: int | None) -> int:
    """Canary pods without autoscaling: `canary.replicas` when set (kept at weight 0 too, for callers
    pinning the canary with the track header), else one pod while it gets traffic and none at weight 0."""
    if replicas is not None:
        return replicas
    return 1 if weight > 0 else 0


def canary_bounds(weight: int, stable_max: int, min_replicas: int | None, max_replicas: int | None) -> tuple[int, int]:
    """The canary's own autoscaler bounds. Default max: its weight's share of stable's maxReplicas,
    rounded up, and at least 1, so a pinned request can still wake a canary at weight 0 (the default
    min is 0: without traffic it holds no GPU)."""
    low = 0 if min_replicas is None else min_replicas
    high = max(1, -(-stable_max * weight // 100)) if max_replicas is None else max_replicas
    return low, max(low, high)


@dataclasses.dataclass(frozen=True)
class TenantLimits:
    requests_per_minute: int | None = None
    max_concurrent: int | None = None
    images_per_minute: int | None = None
    megapixels_per_minute: int | None = None
    tokens_per_minute: int | None = None
    weight: int | None = None


@dataclasses.dataclass(frozen=True)
class Router:
    replicas: int = 1
    image: str | None = None
    api_keys_secret: str | None = None
    default_limits: TenantLimits = TenantLimits()
    tenants: tuple[tuple[str, TenantLimits], ...] = ()
    # Tenants that may pin a track with the override header (docs/router.md, "Track override").
    track_override_tenants: tuple[str, ...] = ()
    request_timeout_seconds: int = 600
    pending_timeout_seconds: int = 300
    max_body_bytes: int = 52428800
    allowed_image_url_schemes: tuple[str, ...] = ("data",)
    routing_strategy: str = "leastOutstanding"
    routing_epsilon: float = 0.25
    # spec.router.fairQueuing as given (the CRD validates it); empty: off.
    fair_queuing: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Tracing:
    """spec.tracing: where the router and the engines send their spans; off without an endpoint.
    Its protocols and defaults are the router's (config.TracingPolicy), which reads what is rendered."""

    endpoint: str | None = None
    protocol: str = TracingPolicy.protocol
    sampling_ratio: float = TracingPolicy.sampling_ratio


@dataclasses.dataclass(frozen=True)
class Scheduling:
    node_selector: Mapping[str, str] = dataclasses.field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    affinity: Mapping[str, Any] | None = None
    priority_class_name: str | None = None


@dataclasses.dataclass(frozen=True)
class PixtralSpec:
    name: str
    namespace: str
    served_model_name: str
    stable: TrackSpec
    canary_track: TrackSpec | None
    canary: Canary | None
    max_image_pixels: int
    max_image_bytes: int
    gpu_product: str | None
    cpu: str
    memory: str
    autoscaling: Autoscaling
    router: Router
    scheduling: Scheduling
    tracing: Tracing = Tracing()

    def tracks(self) -> list[TrackSpec]:
        return [self.stable] + ([self.canary_track] if self.canary_track else [])

    def autoscaling_bounds(self, track: str) -> tuple[int, int]:
        """[min, max] replicas of a track while autoscaling is on: spec.autoscaling's for stable, the
        canary's own for the canary."""
        if track == "canary" and self.canary is not None:
            return self.canary.min_replicas, self.canary.max_replicas
        return self.autoscaling.min_replicas, self.autoscaling.max_replicas

    @property
    def images_per_prompt(self) -> int:
        """The router's limit: a request must fit every track it may be sent to."""
        return min(t.images_per_prompt for t in self.tracks())


def _source(raw: Mapping[str, Any] | None) -> ModelSource:
    raw = raw or {}
    host = (raw.get("hostPath") or {}).get("path")
    pvc = raw.get("pvc") or {}
    hub = raw.get("hub") or {}
    token = hub.get("tokenSecretRef") or {}
    return ModelSource(
        host_path=host,
        pvc_claim=pvc.get("claimName"),
        pvc_sub_path=pvc.get("subPath"),
        hub_token_secret=token.get("name"),
        hub_token_key=token.get("key", "token"),
    )


def _limits(raw: Mapping[str, Any] | None) -> TenantLimits:
    raw = raw or {}
    return TenantLimits(raw.get("requestsPerMinute"), raw.get("maxConcurrent"), raw.get("imagesPerMinute"),
                        raw.get("megapixelsPerMinute"), raw.get("tokensPerMinute"), raw.get("weight"))


def _analysis(raw: Mapping[str, Any] | None) -> Policy | None:
    """The canary analysis policy; its defaults are canary_analysis.Policy's. A policy that cannot be
    followed parses as none: validation.spec_problems reports it and nothing is rendered."""
    if raw is None:
        return None
    try:
        return Policy.from_spec(dict(raw))
    except (PolicyError, TypeError, ValueError):
        return None


def parse(name: str, namespace: str, spec: Mapping[str, Any]) -> PixtralSpec:
    model = spec.get("model") or {}
    engine = spec.get("engine") or {}
    resources = spec.get("resources") or {}
    autoscaling = spec.get("autoscaling") or {}
    router = spec.get("router") or {}
    scheduling = spec.get("scheduling") or {}
    canary_raw = spec.get("canary")
    tracing = spec.get("tracing") or {}

    stable = TrackSpec(
        track="stable",
        replicas=int(spec.get("replicas", 1)),
        model_name=model.get("name") or DEFAULT_MODEL_NAME,
        revision=model.get("revision"),
        source=_source(model.get("source")),
        image=engine.get("image"),
        tensor_parallel_size=int(engine.get("tensorParallelSize", 1)),
        max_model_len=int(engine.get("maxModelLen", 32768)),
        images_per_prompt=int(engine.get("imagesPerPrompt", 4)),
        gpu_memory_utilization=float(engine.get("gpuMemoryUtilization", 0.9)),
        max_num_seqs=int(engine.get("maxNumSeqs", 64)),
        extra_args=tuple(engine.get("extraArgs") or ()),
        env=tuple(engine.get("env") or ()),
    )

    autoscaling_view = Autoscaling(
        enabled=bool(autoscaling.get("enabled", _AUTOSCALING.enabled)),
        min_replicas=int(autoscaling.get("minReplicas", _AUTOSCALING.min_replicas)),
        max_replicas=int(autoscaling.get("maxReplicas", _AUTOSCALING.max_replicas)),
        target_queue_per_replica=int(autoscaling.get("targetQueuePerReplica", _AUTOSCALING.target_queue_per_replica)),
        max_scale_up_step=int(autoscaling.get("maxScaleUpStep", _AUTOSCALING.max_scale_up_step)),
        scale_up_window_seconds=int(autoscaling.get("scaleUpWindowSeconds", _AUTOSCALING.scale_up_window_seconds)),
        scale_down_window_seconds=int(
            autoscaling.get("scaleDownWindowSeconds", _AUTOSCALING.scale_down_window_seconds)
        ),
        prometheus_query=autoscaling.get("prometheusQuery"),
    )

    canary = canary_track = None
    if canary_raw is not None:
        weight = int(canary_raw.get("weight", 0))
        analysis = _analysis(canary_raw.get("analysis"))
        c_auto = canary_raw.get("autoscaling") or {}
        low, high = canary_bounds(
            # Under analysis the canary's share grows to the last step.
            analysis.steps[-1] if analysis else weight,
            autoscaling_view.max_replicas, c_auto.get("minReplicas"), c_auto.get("maxReplicas"),
        )
        raw_replicas = canary_raw.get("replicas")
        canary = Canary(
            weight=weight,
            replicas=canary_replicas(weight, None if raw_replicas is None else int(raw_replicas)),
            sticky_header=canary_raw.get("stickyHeader"),
            min_replicas=int(low),
            max_replicas=int(high),
            analysis=analysis,
        )
        c_model = canary_raw.get("model") or {}
        c_engine = canary_raw.get("engine") or {}
        canary_track = dataclasses.replace(
            stable,
            track="canary",
            replicas=canary.replicas,
            revision=c_model.get("revision", stable.revision),
            source=_source(c_model["source"]) if c_model.get("source") else stable.source,
            image=c_engine.get("image", stable.image),
            images_per_prompt=int(c_engine.get("imagesPerPrompt", stable.images_per_prompt)),
            max_num_seqs=int(c_engine.get("maxNumSeqs", stable.max_num_seqs)),
            extra_args=tuple(c_engine["extraArgs"]) if "extraArgs" in c_engine else stable.extra_args,
            env=tuple(c_engine["env"]) if "env" in c_engine else stable.env,
        )

    return PixtralSpec(
        name=name,
        namespace=namespace,
        served_model_name=model.get("servedModelName") or name,
        stable=stable,
        canary_track=canary_track,
        canary=canary,
        max_image_pixels=int(engine.get("maxImagePixels", 4194304)),
        max_image_bytes=int(engine.get("maxImageBytes", 10485760)),
        gpu_product=resources.get("gpuProduct"),
        cpu=str(resources.get("cpu", "4")),
        memory=str(resources.get("memory", "48Gi")),
        autoscaling=autoscaling_view,
        router=Router(
            replicas=int(router.get("replicas", 1)),
            image=router.get("image"),
            api_keys_secret=(router.get("apiKeysSecretRef") or {}).get("name"),
            default_limits=_limits(router.get("defaultLimits")),
            tenants=tuple((t["name"], _limits(t)) for t in router.get("tenants") or ()),
            track_override_tenants=tuple(t["name"] for t in router.get("tenants") or () if t.get("trackOverride")),
            request_timeout_seconds=int(router.get("requestTimeoutSeconds", 600)),
            pending_timeout_seconds=int(router.get("pendingTimeoutSeconds", 300)),
            max_body_bytes=int(router.get("maxBodyBytes", 52428800)),
            allowed_image_url_schemes=tuple(router.get("allowedImageUrlSchemes") or ("data",)),
            routing_strategy=str((router.get("routing") or {}).get("strategy", "leastOutstanding")),
            routing_epsilon=float((router.get("routing") or {}).get("epsilon", 0.25)),
            fair_queuing=dict(router.get("fairQueuing") or {}),
        ),
        scheduling=Scheduling(
            node_selector=dict(scheduling.get("nodeSelector") or {}),
            tolerations=tuple(scheduling.get("tolerations") or ()),
            affinity=scheduling.get("affinity"),
            priority_class_name=scheduling.get("priorityClassName"),
        ),
        tracing=Tracing(
            endpoint=tracing.get("endpoint") or None,
            protocol=str(tracing.get("protocol", Tracing.protocol)),
            sampling_ratio=float(tracing.get("samplingRatio", Tracing.sampling_ratio)),
        ),
    )
