"""Process settings of `pixtral-runtime router`: flags override environment variables (docs/settings.md)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass

from .config import RouterConfig


@dataclass(frozen=True)
class RouterSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    namespace: str | None = None
    configmap: str | None = None
    config_path: str | None = None
    # The API-key Secret mounted as a volume (one file per tenant): read from there, not the API.
    api_keys_dir: str | None = None
    # The internal key vLLM requires (a mounted Secret file): sent upstream in place of the tenant's.
    internal_key_file: str | None = None
    # An already parsed static configuration (tests, embedding); wins over config_path.
    config: RouterConfig | None = None
    log_level: str = "info"
    # One JSON line per tenant request on stdout (accesslog.py). The command line turns it on unless
    # told otherwise; off here for embedding and tests, which build their settings by hand.
    access_log: bool = False
    # How long an idle pooled upstream connection is kept. Below uvicorn's (and so vLLM's) 5 s
    # keep-alive, so the router never reuses a connection the backend is about to close.
    upstream_keepalive_seconds: float = 3.0
    upstream_connect_timeout_seconds: float = 5.0
    # How long a backend that refused a connection is skipped (unless nothing else is left).
    eject_seconds: float = 5.0
    # /metrics is served only on this port, never on the tenant port; None (embedding, tests):
    # on every port the server listens on.
    metrics_port: int | None = None
    # Whether answers carry x-pixtral-backend (the pod address that served them).
    debug_headers: bool = False
    # A client has this long for its request line and headers, and this many bytes for them (431).
    header_timeout_seconds: float = 10.0
    max_header_bytes: int = 64 * 1024
    # ... and this long, from the first byte, for its whole body (408).
    body_timeout_seconds: float = 60.0
    # Request bodies all requests of the process may hold at once (body.py); None: derived from
    # memory_limit_bytes.
    body_budget_bytes: int | None = None
    memory_limit_bytes: int | None = None
    # In-flight requests get this long to finish on SIGTERM (the operator's preStop and
    # terminationGracePeriodSeconds are derived from the same request timeout).
    graceful_shutdown_seconds: float = 30.0

    @property
    def mode(self) -> str:
        return "static" if (self.config is not None or self.config_path) else "kubernetes"


class SettingsError(ValueError):
    pass


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pixtral-runtime router", description="Tenant-facing OpenAI router for Pixtral.")
    p.add_argument("--host", help="bind address (env PIXTRAL_ROUTER_HOST, default 0.0.0.0)")
    p.add_argument("--port", type=int, help="port (env PIXTRAL_ROUTER_PORT, default 8080)")
    p.add_argument("--namespace", help="namespace to watch (env PIXTRAL_NAMESPACE)")
    p.add_argument("--configmap", help="the operator's ConfigMap, key config.json (env PIXTRAL_ROUTER_CONFIGMAP)")
    p.add_argument("--config", help="static config file instead of the ConfigMap (env PIXTRAL_ROUTER_CONFIG)")
    p.add_argument("--api-keys-dir", help="the config's API-key Secret mounted as a volume: read the keys from "
                   "these files instead of watching the Secret (env PIXTRAL_ROUTER_API_KEYS_DIR)")
    p.add_argument("--internal-key-file", help="file with the key sent to vLLM as Authorization: Bearer, re-read "
                   "when it changes (env PIXTRAL_ROUTER_INTERNAL_KEY_FILE; default: no key)")
    p.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"],
                   help="log level (env PIXTRAL_ROUTER_LOG_LEVEL, default info)")
    p.add_argument("--metrics-port", type=int,
                   help="serve /metrics on this port only (env PIXTRAL_ROUTER_METRICS_PORT; default: the main port)")
    p.add_argument("--debug-headers", action="store_true", default=None,
                   help="add x-pixtral-backend (the serving pod's address) to answers (env PIXTRAL_ROUTER_DEBUG_HEADERS=1)")
    p.add_argument("--graceful-shutdown-seconds", type=float,
                   help="time in-flight requests get on SIGTERM (env PIXTRAL_ROUTER_GRACEFUL_SHUTDOWN_SECONDS, default 30)")
    p.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=None,
                   help="one JSON line per tenant request on stdout (env PIXTRAL_ROUTER_ACCESS_LOG=0 turns it off; "
                   "default on)")
    return p


def settings_from(argv: list[str], environ: Mapping[str, str]) -> RouterSettings:
    args = build_parser().parse_args(argv)
    port_text = args.port if args.port is not None else environ.get("PIXTRAL_ROUTER_PORT", "8080")
    try:
        port = int(port_text)
    except ValueError:
        raise SettingsError(f"PIXTRAL_ROUTER_PORT must be a port number, got {port_text!r}") from None
    if not 0 <= port <= 65535:
        raise SettingsError(f"port must be in 0..65535, got {port}")
    config_path = args.config or environ.get("PIXTRAL_ROUTER_CONFIG") or None
    namespace = args.namespace or environ.get("PIXTRAL_NAMESPACE") or None
    configmap = args.configmap or environ.get("PIXTRAL_ROUTER_CONFIGMAP") or None
    if not config_path and not (namespace and configmap):
        raise SettingsError(
            "no configuration source: set --config/PIXTRAL_ROUTER_CONFIG (static file) or both "
            "--namespace/PIXTRAL_NAMESPACE and --configmap/PIXTRAL_ROUTER_CONFIGMAP (Kubernetes)"
        )
    access_log = args.access_log if args.access_log is not None else environ.get(
        "PIXTRAL_ROUTER_ACCESS_LOG", "1"
    ).lower() not in {"0", "false", "no", "off"}
    metrics_port = _optional_int(args.metrics_port, environ, "PIXTRAL_ROUTER_METRICS_PORT", 1, 65535)
    if metrics_port is not None and metrics_port == port:
        raise SettingsError(f"the metrics port must differ from the tenant port {port}")
    graceful = args.graceful_shutdown_seconds
    if graceful is None:
        graceful = _optional_float(environ, "PIXTRAL_ROUTER_GRACEFUL_SHUTDOWN_SECONDS", 30.0)
    return RouterSettings(
        metrics_port=metrics_port,
        debug_headers=_flag(args.debug_headers, environ, "PIXTRAL_ROUTER_DEBUG_HEADERS"),
        graceful_shutdown_seconds=graceful,
        memory_limit_bytes=_optional_int(None, environ, "PIXTRAL_ROUTER_MEMORY_LIMIT_BYTES", 1, 1 << 50),
        body_budget_bytes=_optional_int(None, environ, "PIXTRAL_ROUTER_BODY_BUDGET_BYTES", 1, 1 << 50),
        header_timeout_seconds=_optional_float(environ, "PIXTRAL_ROUTER_HEADER_TIMEOUT_SECONDS", 10.0),
        body_timeout_seconds=_optional_float(environ, "PIXTRAL_ROUTER_BODY_TIMEOUT_SECONDS", 60.0),
        host=args.host or environ.get("PIXTRAL_ROUTER_HOST") or "0.0.0.0",
        port=port,
        namespace=namespace,
        configmap=configmap,
        config_path=config_path,
        api_keys_dir=args.api_keys_dir or environ.get("PIXTRAL_ROUTER_API_KEYS_DIR") or None,
        internal_key_file=args.internal_key_file or environ.get("PIXTRAL_ROUTER_INTERNAL_KEY_FILE") or None,
        log_level=args.log_level or environ.get("PIXTRAL_ROUTER_LOG_LEVEL", "info").lower(),
        access_log=access_log,
    )


def _flag(value: bool | None, environ: Mapping[str, str], name: str) -> bool:
    if value is not None:
        return value
    return environ.get(name, "").lower() in {"1", "true", "yes"}


def _optional_int(value: int | None, environ: Mapping[str, str], name: str, low: int, high: int) -> int | None:
    text = value if value is not None else environ.get(name) or None
    if text is None:
        return None
    try:
        number = int(text)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {text!r}") from None
    if not low <= number <= high:
        raise SettingsError(f"{name} must be in {low}..{high}, got {number}")
    return number


def _optional_float(environ: Mapping[str, str], name: str, default: float) -> float:
    text = environ.get(name) or None
    if text is None:
        return default
    try:
        number = float(text)
    except ValueError:
        raise SettingsError(f"{name} must be a number of seconds, got {text!r}") from None
    if not number > 0:
        raise SettingsError(f"{name} must be > 0, got {number}")
    return number
