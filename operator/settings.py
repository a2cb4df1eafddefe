"""Operator-wide settings, read from the environment once at start-up (never at import)."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping

from pixtral_operator._version import __version__

# The engine image (vLLM + the supervisor, about 10 GB) and the slim router image (the router alone:
# no vLLM, no torch), both tagged with this release. Router pods never pull the engine image.
DEFAULT_RUNTIME_IMAGE = f"ghcr.io/pixtral-operator/pixtral-runtime:{__version__}"
DEFAULT_ROUTER_IMAGE = f"ghcr.io/pixtral-operator/pixtral-router:{__version__}"
# Namespaces whose pods may scrape the runtime pods' /metrics through the NetworkPolicy
# (docs/settings.md#networkpolicy); `PIXTRAL_METRICS_FROM_NAMESPACES` replaces the list.
DEFAULT_METRICS_FROM_NAMESPACES = ("monitoring",)


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


class SettingsError(ValueError):
    """An operator setting with a value it cannot take; the message names the variable."""


# How Prometheus finds the runtime and router pods (docs/settings.md#monitoring): pod annotations for a
# `kubernetes_sd` scrape config, or one Prometheus Operator PodMonitor per PixtralDeployment. Never
# both, since a Prometheus that honours annotations and selects the PodMonitor would scrape twice.
MONITORING_MODES = ("annotations", "podmonitor")
_LABEL_NAME = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


def _monitoring(env: Mapping[str, str]) -> str:
    value = env.get("PIXTRAL_MONITORING", "annotations").strip().lower() or "annotations"
    if value not in MONITORING_MODES:
        raise SettingsError(f"PIXTRAL_MONITORING={env['PIXTRAL_MONITORING']!r}: expected one of {', '.join(MONITORING_MODES)}")
    return value


# A Prometheus duration as the Prometheus Operator's CRDs accept it for an endpoint's interval.
_DURATION = re.compile(r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$")
DEFAULT_MONITOR_INTERVAL = "15s"


def _monitor_interval(env: Mapping[str, str]) -> str:
    value = env.get("PIXTRAL_MONITOR_INTERVAL", "").strip() or DEFAULT_MONITOR_INTERVAL
    if value == "0" or not _DURATION.match(value):
        raise SettingsError(f"PIXTRAL_MONITOR_INTERVAL={value!r}: expected a Prometheus duration above zero, e.g. 15s or 1m")
    return value


def _labels(env: Mapping[str, str], name: str) -> tuple[tuple[str, str], ...]:
    """`key=value,key2=value2` -> pairs, each a valid Kubernetes label."""
    out = []
    for item in _names(env.get(name, "")):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not _LABEL_NAME.match(key) or len(key.rpartition("/")[0]) > 253 or not _LABEL_VALUE.match(value):
            raise SettingsError(f"{name}: {item!r} is not a Kubernetes label key=value (e.g. release=kube-prometheus-stack)")
        out.append((key, value))
    return tuple(out)


def _positive_int(env: Mapping[str, str], name: str, default: int, unit: str = "seconds") -> int:
    if name not in env:
        return default
    try:
        value = int(env[name])
    except ValueError:
        value = 0
    if value < 1:
        raise SettingsError(f"{name}={env[name]!r}: expected a whole number of {unit}, at least 1")
    return value


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    if name not in env:
        return default
    value = env[name].strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SettingsError(f"{name}={env[name]!r}: expected one of true/false (or 1/0, yes/no, on/off)")


@dataclasses.dataclass(frozen=True)
class OperatorSettings:
    runtime_image: str = DEFAULT_RUNTIME_IMAGE
    router_image: str = DEFAULT_ROUTER_IMAGE
    prometheus_url: str | None = None
    watch_namespaces: tuple[str, ...] = ()
    metrics_from_namespaces: tuple[str, ...] = DEFAULT_METRICS_FROM_NAMESPACES
    peering: str | None = None
    health_host: str = "0.0.0.0"
    health_port: int = 8080
    metrics_port: int = 9090
    log_level: str = "INFO"
    # The safety net behind the watches (handlers/watch.py): a full pass of every object this often.
    resync_seconds: float = 300.0
    autoscale_seconds: float = 2.0
    # kopf peering: how long a replica's record counts as alive without a keep-alive. A killed
    # active replica is replaced by a standby after at most this long (kopf's own default is 60 s).
    peering_lifetime_seconds: int = 10
    # How often the canary analysis looks (a check is due once per spec.canary.analysis.intervalSeconds).
    canary_seconds: float = 2.0
    # Threads for the blocking Kubernetes calls, in kopf's handler pool and in the pool the timers'
    # reads and status writes hop to. Each holds a thread for an API round trip; the default of both
    # pools (CPU count + 4: 6 on 2 cores) made 200 creates wait in line for the pool.
    worker_threads: int = 16
    cluster_domain: str = "svc"
    # False: a GPU capacity finding is advisory (operator/capacity.py), so node pools that scale from
    # zero see pending pods; True: it refuses the spec.
    strict_gpu_check: bool = False
    monitoring: str = "annotations"
    # Extra labels on the PodMonitor: what the Prometheus resource's podMonitorSelector asks for.
    monitor_labels: tuple[tuple[str, str], ...] = ()
    # How often the PodMonitor's endpoints are scraped; the autoscaler sees a queue at most this late.
    monitor_interval: str = DEFAULT_MONITOR_INTERVAL

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorSettings:
        env = os.environ if env is None else env
        metrics_from = env.get("PIXTRAL_METRICS_FROM_NAMESPACES")
        return cls(
            runtime_image=env.get("PIXTRAL_RUNTIME_IMAGE") or DEFAULT_RUNTIME_IMAGE,
            router_image=env.get("PIXTRAL_ROUTER_IMAGE") or DEFAULT_ROUTER_IMAGE,
            prometheus_url=env.get("PIXTRAL_PROMETHEUS_URL") or None,
            watch_namespaces=_names(env.get("PIXTRAL_WATCH_NAMESPACES", "")),
            # Unset: the default list; set but empty: no namespace may scrape.
            metrics_from_namespaces=DEFAULT_METRICS_FROM_NAMESPACES if metrics_from is None else _names(metrics_from),
            peering=env.get("PIXTRAL_PEERING") or None,
            health_host=env.get("POD_IP") or "0.0.0.0",
            health_port=int(env.get("PIXTRAL_HEALTH_PORT", "8080")),
            metrics_port=int(env.get("PIXTRAL_METRICS_PORT", "9090")),
            log_level=env.get("PIXTRAL_LOG_LEVEL", "INFO").upper(),
            resync_seconds=float(env.get("PIXTRAL_RESYNC_SECONDS", str(cls.resync_seconds))),
            autoscale_seconds=float(env.get("PIXTRAL_AUTOSCALE_SECONDS", "2")),
            peering_lifetime_seconds=_positive_int(env, "PIXTRAL_PEERING_LIFETIME_SECONDS", cls.peering_lifetime_seconds),
            canary_seconds=float(env.get("PIXTRAL_CANARY_SECONDS", "2")),
            worker_threads=_positive_int(env, "PIXTRAL_WORKER_THREADS", cls.worker_threads, unit="threads"),
            strict_gpu_check=_flag(env, "PIXTRAL_STRICT_GPU_CHECK", False),
            monitoring=_monitoring(env),
            monitor_labels=_labels(env, "PIXTRAL_MONITOR_LABELS"),
            monitor_interval=_monitor_interval(env),
        )
