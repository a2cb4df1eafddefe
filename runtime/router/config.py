"""The router's configuration: the `config.json` shape rendered by the operator (docs/settings.md).

`parse_config` turns the decoded JSON into frozen dataclasses and names the offending field in
every error, so a bad ConfigMap shows up as one clear log line instead of a crash deep in a request.
Unknown fields are ignored (returned as warnings) so that a newer operator can add settings
without breaking an older router.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

STABLE = "stable"
CANARY = "canary"
TRACKS = (STABLE, CANARY)
# Image URL schemes a policy may allow; `file` and the rest never (urlpolicy.py).
IMAGE_URL_SCHEMES = frozenset({"data", "http", "https"})


class ConfigError(ValueError):
    """The configuration is unusable; the message names the field."""


@dataclass(frozen=True)
class TrackTarget:
    service: str
    port: int


@dataclass(frozen=True)
class Limits:
    # 0 disables the limit.
    requests_per_minute: int
    max_concurrent: int
    # Image budgets, checked at admission (docs/router.md, "Limits").
    images_per_minute: int = 0
    megapixels_per_minute: int = 0
    # Prompt + completion tokens per minute, as the engine reports them (usage.py), debited after
    # each answer: a request admitted under the budget completes, the next waits until it is back.
    tokens_per_minute: int = 0
    # The tenant's share of freed places when a track is saturated (fair queuing): served up to
    # `weight` requests per turn. Not a limit: never split between router replicas.
    weight: int = 1


@dataclass(frozen=True)
class AdmissionPolicy:
    images_per_prompt: int = 4
    max_image_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 4 * 1024 * 1024
    allowed_image_url_schemes: frozenset[str] = frozenset({"data"})
    # Exact host names http(s) image URLs may name (vLLM's --allowed-media-domains); empty: none.
    allowed_image_url_domains: frozenset[str] = frozenset()
    max_body_bytes: int = 50 * 1024 * 1024


# Backend choice within a track (docs/router.md, "Routing").
LEAST_OUTSTANDING = "leastOutstanding"
IMAGE_AFFINITY = "imageAffinity"
ROUND_ROBIN = "roundRobin"
ROUTING_STRATEGIES = (LEAST_OUTSTANDING, IMAGE_AFFINITY, ROUND_ROBIN)


@dataclass(frozen=True)
class RoutingPolicy:
    # Least outstanding stays the default: the affinity benchmark did not put imageAffinity clearly
    # ahead of it (docs/benchmarks.md, "Image affinity").
    strategy: str = LEAST_OUTSTANDING
    # Bounded loads: a backend above (1 + epsilon) x the mean load is skipped (affinity.py).
    epsilon: float = 0.25


@dataclass(frozen=True)
class QueuePolicy:
    # 0: fair queuing off. Otherwise the requests one backend serves at once before the router holds
    # more back in per-tenant queues (vLLM's --max-num-seqs is the natural value: beyond it vLLM
    # queues first come first served). Split between router replicas like the tenants' limits.
    backend_concurrency: int = 0
    max_queued_per_tenant: int = 100
    max_queued: int = 1000
    max_wait_seconds: float = 30.0


# OTLP protocols the router and vLLM both export with (OTEL_EXPORTER_OTLP_TRACES_PROTOCOL's values).
OTLP_PROTOCOLS = ("grpc", "http/protobuf")


@dataclass(frozen=True)
class TracingPolicy:
    # The OTLP traces endpoint as the exporter takes it (for http/protobuf the full URL, .../v1/traces);
    # None: tracing off. The operator derives it from spec.tracing (docs/operations.md, "Tracing").
    endpoint: str | None = None
    protocol: str = "grpc"
    # Share of requests traced, decided per trace ID; vLLM follows the router's decision (its
    # sampler is parent-based), so a trace never holds one side only.
    sampling_ratio: float = 1.0


@dataclass(frozen=True)
class TenancyPolicy:
    api_keys_secret: str | None = None
    default_limits: Limits = Limits(requests_per_minute=600, max_concurrent=16)
    tenants: dict[str, Limits] = field(default_factory=dict)
    # Tenants whose `trackOverride: true` lets them pin a track with the override header; the
    # header from anyone else is refused (docs/router.md, "Track override").
    track_override_tenants: frozenset[str] = frozenset()

    def limits_for(self, tenant: str) -> Limits:
        return self.tenants.get(tenant, self.default_limits)


@dataclass(frozen=True)
class RouterConfig:
    deployment: str = "pixtral"
    served_model_name: str | None = None
    tracks: dict[str, TrackTarget] = field(default_factory=dict)
    canary_weight: float = 0.0
    sticky_header: str | None = None
    override_header: str = "x-pixtral-track"
    admission: AdmissionPolicy = AdmissionPolicy()
    tenancy: TenancyPolicy = TenancyPolicy()
    routing: RoutingPolicy = RoutingPolicy()
    fair_queuing: QueuePolicy = QueuePolicy()
    tracing: TracingPolicy = TracingPolicy()
    request_timeout_seconds: float = 600.0
    pending_timeout_seconds: float = 120.0
    # The router's own Service: its ready endpoints are the replicas that share each tenant's limits.
    router_service: str | None = None
    # Static mode only (local use, tests): track -> base URLs, and tenant -> API key.
    backends: dict[str, tuple[str, ...]] | None = None
    api_keys: dict[str, str] | None = None

    @property
    def auth_required(self) -> bool:
        return self.tenancy.api_keys_secret is not None or self.api_keys is not None


def _expect(value: Any, kind: type | tuple[type, ...], where: str, what: str) -> Any:
    # bool is an int subclass; a `true` where a number belongs is a mistake, not 1.
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise ConfigError(f"{where} must be {what}, got {json.dumps(value)}")
    if not isinstance(value, kind):
        raise ConfigError(f"{where} must be {what}, got {json.dumps(value, default=str)[:80]}")
    return value


def _int(obj: dict, key: str, where: str, default: int, *, minimum: int = 0) -> int:
    if key not in obj:
        return default
    value = _expect(obj[key], int, f"{where}.{key}", f"an integer >= {minimum}")
    if value < minimum:
        raise ConfigError(f"{where}.{key} must be an integer >= {minimum}, got {value}")
    return value


def _number(obj: dict, key: str, where: str, default: float, *, minimum: float, maximum: float = math.inf) -> float:
    if key not in obj:
        return default
    value = _expect(obj[key], (int, float), f"{where}.{key}", f"a number in [{minimum}, {maximum}]")
    if not (minimum <= value <= maximum) or math.isnan(value):
        raise ConfigError(f"{where}.{key} must be a number in [{minimum}, {maximum}], got {value}")
    return float(value)


def _str(obj: dict, key: str, where: str, default: str | None) -> str | None:
    if key not in obj or obj[key] is None:
        return default
    value = _expect(obj[key], str, f"{where}.{key}", "a non-empty string")
    if not value:
        raise ConfigError(f"{where}.{key} must be a non-empty string")
    return value


def _bool(obj: dict, key: str, where: str, default: bool) -> bool:
    if key not in obj:
        return default
    return _expect(obj[key], bool, f"{where}.{key}", "true or false")


def _obj(obj: dict, key: str, where: str) -> dict:
    if key not in obj or obj[key] is None:
        return {}
    return _expect(obj[key], dict, f"{where}.{key}", "an object")


def _limits(raw: Any, where: str, default: Limits) -> Limits:
    _expect(raw, dict, where, "an object")
    return Limits(
        requests_per_minute=_int(raw, "requestsPerMinute", where, default.requests_per_minute),
        max_concurrent=_int(raw, "maxConcurrent", where, default.max_concurrent),
        images_per_minute=_int(raw, "imagesPerMinute", where, default.images_per_minute),
        megapixels_per_minute=_int(raw, "megapixelsPerMinute", where, default.megapixels_per_minute),
        tokens_per_minute=_int(raw, "tokensPerMinute", where, default.tokens_per_minute),
        weight=_weight(raw, where, default.weight),
    )


def _weight(raw: dict, where: str, default: int) -> int:
    weight = _int(raw, "weight", where, default, minimum=1)
    if weight > 1000:
        raise ConfigError(f"{where}.weight must be an integer in [1, 1000], got {weight}")
    return weight


def _fair_queuing(raw: dict, where: str) -> QueuePolicy:
    d = QueuePolicy()
    return QueuePolicy(
        backend_concurrency=_int(raw, "backendConcurrency", where, d.backend_concurrency),
        max_queued_per_tenant=_int(raw, "maxQueuedPerTenant", where, d.max_queued_per_tenant, minimum=1),
        max_queued=_int(raw, "maxQueued", where, d.max_queued, minimum=1),
        max_wait_seconds=_number(raw, "maxWaitSeconds", where, d.max_wait_seconds, minimum=0.001, maximum=3600.0),
    )


def _backend_url(raw: Any, where: str) -> str:
    """Normalised to http://host:port (the runtimes speak plain HTTP/1.1 inside the cluster)."""
    from urllib.parse import urlsplit

    example = 'a URL like "http://127.0.0.1:8000"'
    _expect(raw, str, where, example)
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError:
        raise ConfigError(f"{where} must be {example}, got {raw!r}") from None
    if parts.scheme != "http" or not parts.hostname or port is None or parts.path.strip("/"):
        raise ConfigError(f"{where} must be {example} (http, host and port, no path), got {raw!r}")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"http://{host}:{port}"


def _routing(raw: dict, where: str) -> RoutingPolicy:
    strategy = _str(raw, "strategy", where, LEAST_OUTSTANDING)
    if strategy not in ROUTING_STRATEGIES:
        raise ConfigError(f"{where}.strategy must be one of {', '.join(ROUTING_STRATEGIES)}, got {strategy!r}")
    # Above 10 the bound never binds for a handful of backends: affinity without balance.
    epsilon = _number(raw, "epsilon", where, RoutingPolicy.epsilon, minimum=0.01, maximum=10.0)
    return RoutingPolicy(strategy=strategy, epsilon=epsilon)


def _tracing(raw: dict, where: str) -> TracingPolicy:
    endpoint = _str(raw, "endpoint", where, None)
    protocol = _str(raw, "protocol", where, TracingPolicy.protocol)
    if protocol not in OTLP_PROTOCOLS:
        raise ConfigError(f"{where}.protocol must be one of {', '.join(OTLP_PROTOCOLS)}, got {protocol!r}")
    if endpoint is not None and not endpoint.startswith(("http://", "https://")):
        raise ConfigError(f"{where}.endpoint must be an http:// or https:// URL, got {endpoint[:80]!r}")
    ratio = _number(raw, "samplingRatio", where, TracingPolicy.sampling_ratio, minimum=0.0, maximum=1.0)
    return TracingPolicy(endpoint=endpoint or None, protocol=protocol, sampling_ratio=ratio)


def parse_config(data: Any, *, source: str = "config.json") -> RouterConfig:
    """Validate the decoded config.json; raises ConfigError naming the field."""
    _expect(data, dict, source, "a JSON object")
    where = source

    tracks: dict[str, TrackTarget] = {}
    for name, raw in _obj(data, "tracks", where).items():
        tw = f"{where}.tracks.{name}"
        if name not in TRACKS:
            raise ConfigError(f"{where}.tracks has unknown track {name!r}; tracks are {', '.join(TRACKS)}")
        _expect(raw, dict, tw, "an object")
        service = _str(raw, "service", tw, None)
        if service is None:
            raise ConfigError(f"{tw}.service is required")
        port = _int(raw, "port", tw, 8000, minimum=1)
        if port > 65535:
            raise ConfigError(f"{tw}.port must be <= 65535, got {port}")
        tracks[name] = TrackTarget(service=service, port=port)

    backends: dict[str, tuple[str, ...]] | None = None
    if data.get("backends") is not None:
        backends = {}
        for name, urls in _obj(data, "backends", where).items():
            bw = f"{where}.backends.{name}"
            if name not in TRACKS:
                raise ConfigError(f"{where}.backends has unknown track {name!r}; tracks are {', '.join(TRACKS)}")
            _expect(urls, list, bw, "a list of URLs")
            backends[name] = tuple(_backend_url(u, f"{bw}[{i}]") for i, u in enumerate(urls))

    if not tracks and backends is None:
        raise ConfigError(f"{where} needs `tracks` (Kubernetes discovery) or `backends` (static mode)")

    canary = _obj(data, "canary", where)
    canary_weight = _number(canary, "weight", f"{where}.canary", 0.0, minimum=0.0, maximum=100.0)
    sticky_header = _str(canary, "stickyHeader", f"{where}.canary", None)

    adm = _obj(data, "admission", where)
    aw = f"{where}.admission"
    defaults = AdmissionPolicy()
    schemes = adm.get("allowedImageUrlSchemes", sorted(defaults.allowed_image_url_schemes))
    _expect(schemes, list, f"{aw}.allowedImageUrlSchemes", 'a list of URL schemes like ["data"]')
    for i, s in enumerate(schemes):
        if not isinstance(s, str) or s.lower() not in IMAGE_URL_SCHEMES:
            raise ConfigError(f"{aw}.allowedImageUrlSchemes[{i}] must be one of data, http, https, got {s!r}")
    domains = adm.get("allowedImageUrlDomains", [])
    _expect(domains, list, f"{aw}.allowedImageUrlDomains", 'a list of host names like ["images.example.com"]')
    for i, d in enumerate(domains):
        if not isinstance(d, str) or not d or any(c in d for c in "/@:\\ \t"):
            raise ConfigError(f"{aw}.allowedImageUrlDomains[{i}] must be a host name like \"images.example.com\", got {d!r}")
    admission = AdmissionPolicy(
        images_per_prompt=_int(adm, "imagesPerPrompt", aw, defaults.images_per_prompt),
        max_image_bytes=_int(adm, "maxImageBytes", aw, defaults.max_image_bytes, minimum=1),
        max_image_pixels=_int(adm, "maxImagePixels", aw, defaults.max_image_pixels, minimum=1),
        allowed_image_url_schemes=frozenset(s.lower() for s in schemes),
        allowed_image_url_domains=frozenset(d.lower().rstrip(".") for d in domains),
        max_body_bytes=_int(adm, "maxBodyBytes", aw, defaults.max_body_bytes, minimum=1),
    )

    ten = _obj(data, "tenancy", where)
    tw = f"{where}.tenancy"
    default_limits = TenancyPolicy().default_limits
    if ten.get("defaultLimits") is not None:
        default_limits = _limits(ten["defaultLimits"], f"{tw}.defaultLimits", default_limits)
    raw_tenants = _obj(ten, "tenants", tw)
    tenants = {name: _limits(raw, f"{tw}.tenants.{name}", default_limits) for name, raw in raw_tenants.items()}
    tenancy = TenancyPolicy(
        api_keys_secret=_str(ten, "apiKeysSecret", tw, None), default_limits=default_limits, tenants=tenants,
        track_override_tenants=frozenset(
            name for name, raw in raw_tenants.items() if _bool(raw, "trackOverride", f"{tw}.tenants.{name}", False)),
    )

    routing = _routing(_obj(data, "routing", where), f"{where}.routing")
    fair_queuing = _fair_queuing(_obj(data, "fairQueuing", where), f"{where}.fairQueuing")
    tracing = _tracing(_obj(data, "tracing", where), f"{where}.tracing")

    api_keys: dict[str, str] | None = None
    if data.get("apiKeys") is not None:
        api_keys = {}
        for tenant, key in _obj(data, "apiKeys", where).items():
            # Never echo the key itself in an error.
            if not isinstance(key, str) or not key:
                raise ConfigError(f"{where}.apiKeys.{tenant} must be a non-empty string")
            api_keys[tenant] = key

    return RouterConfig(
        deployment=_str(data, "deployment", where, "pixtral"),
        served_model_name=_str(data, "servedModelName", where, None),
        tracks=tracks,
        canary_weight=canary_weight,
        sticky_header=sticky_header.lower() if sticky_header else None,
        override_header=(_str(data, "overrideHeader", where, "x-pixtral-track") or "x-pixtral-track").lower(),
        admission=admission,
        tenancy=tenancy,
        routing=routing,
        fair_queuing=fair_queuing,
        tracing=tracing,
        request_timeout_seconds=_number(data, "requestTimeoutSeconds", where, 600.0, minimum=0.001),
        pending_timeout_seconds=_number(data, "pendingTimeoutSeconds", where, 120.0, minimum=0.0),
        router_service=_str(data, "routerService", where, None),
        backends=backends,
        api_keys=api_keys,
    )


KNOWN_TOP_LEVEL = frozenset(
    {
        "deployment", "servedModelName", "tracks", "canary", "overrideHeader", "admission", "tenancy", "routing",
        "fairQueuing", "tracing",
        "requestTimeoutSeconds", "pendingTimeoutSeconds", "routerService", "backends", "apiKeys",
    }
)


def unknown_fields(data: Any) -> list[str]:
    """Top-level fields this router does not know (logged, not fatal)."""
    return sorted(set(data) - KNOWN_TOP_LEVEL) if isinstance(data, dict) else []


def parse_config_text(text: str | bytes, *, source: str = "config.json") -> RouterConfig:
    return parse_config_text_with_unknown(text, source=source)[0]


def parse_config_text_with_unknown(text: str | bytes, *, source: str = "config.json") -> tuple[RouterConfig, list[str]]:
    """The configuration and the top-level fields it ignored (to be logged), from one parse."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{source} is not valid JSON: {exc}") from None
    return parse_config(data, source=source), unknown_fields(data)


def read_config_file(path: str) -> tuple[RouterConfig, list[str]]:
    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read router config {path}: {exc.strerror}") from None
    return parse_config_text_with_unknown(text, source=path)


def load_config_file(path: str) -> RouterConfig:
    return read_config_file(path)[0]
