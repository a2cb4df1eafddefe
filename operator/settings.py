"""Operator-wide settings, read from the environment once at start-up (never at import)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

DEFAULT_RUNTIME_IMAGE = "ghcr.io/pixtral-operator/pixtral-runtime:0.1.0"


@dataclasses.dataclass(frozen=True)
class OperatorSettings:
    runtime_image: str = DEFAULT_RUNTIME_IMAGE
    router_image: str = DEFAULT_RUNTIME_IMAGE
    prometheus_url: str | None = None
    watch_namespaces: tuple[str, ...] = ()
    peering: str | None = None
    health_host: str = "0.0.0.0"
    health_port: int = 8080
    metrics_port: int = 9090
    log_level: str = "INFO"
    resync_seconds: float = 5.0
    autoscale_seconds: float = 2.0
    cluster_domain: str = "svc"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorSettings:
        env = os.environ if env is None else env
        namespaces = tuple(n.strip() for n in env.get("PIXTRAL_WATCH_NAMESPACES", "").split(",") if n.strip())
        runtime_image = env.get("PIXTRAL_RUNTIME_IMAGE") or DEFAULT_RUNTIME_IMAGE
        return cls(
            runtime_image=runtime_image,
            router_image=env.get("PIXTRAL_ROUTER_IMAGE") or runtime_image,
            prometheus_url=env.get("PIXTRAL_PROMETHEUS_URL") or None,
            watch_namespaces=namespaces,
            peering=env.get("PIXTRAL_PEERING") or None,
            health_host=env.get("POD_IP") or "0.0.0.0",
            health_port=int(env.get("PIXTRAL_HEALTH_PORT", "8080")),
            metrics_port=int(env.get("PIXTRAL_METRICS_PORT", "9090")),
            log_level=env.get("PIXTRAL_LOG_LEVEL", "INFO").upper(),
            resync_seconds=float(env.get("PIXTRAL_RESYNC_SECONDS", "5")),
            autoscale_seconds=float(env.get("PIXTRAL_AUTOSCALE_SECONDS", "2")),
        )
