"""`pixtral-runtime router`: parse settings, build the app, serve it with uvicorn."""

from __future__ import annotations

import importlib.util
import logging
import os
import resource
import socket
import sys
from typing import Any

from .config import ConfigError
from .settings import RouterSettings, SettingsError, settings_from

log = logging.getLogger("pixtral_runtime.router")


def _raise_fd_limit() -> None:
    # Every proxied stream holds two sockets; the default soft limit (often 1024) caps streams at ~500.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard))
        except (ValueError, OSError):
            pass


def main(argv: list[str] | None = None) -> int:
    try:
        settings = settings_from(list(sys.argv[1:] if argv is None else argv), os.environ)
    except SettingsError as exc:
        print(f"pixtral-runtime router: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if settings.config_path:
        # Fail fast with the field name rather than inside the server's lifespan.
        from dataclasses import replace

        from .config import read_config_file

        try:
            config, extra = read_config_file(settings.config_path)
        except ConfigError as exc:
            print(f"pixtral-runtime router: {exc}", file=sys.stderr)
            return 2
        if extra:
            log.warning("ignoring unknown config fields: %s", ", ".join(extra))
        settings = replace(settings, config=config)

    import uvicorn

    from .app import create_app

    _raise_fd_limit()
    # Large bodies are admitted in a worker thread in short C calls (scan.py). At the default 5 ms
    # switch interval every hand-over of the GIL back to the event loop can take up to 5 ms, and a
    # wake-up needs several; at 1 ms the streams keep flowing (docs/benchmarks.md, "Router hardening").
    sys.setswitchinterval(0.001)
    server = uvicorn.Server(server_config(create_app(settings), settings))
    server.run(sockets=listen_sockets(settings))
    # uvicorn sets `started` only after a successful lifespan startup and bind.
    return 0 if server.started else 1


def server_config(app: Any, settings: RouterSettings, **overrides: Any) -> Any:
    """uvicorn's settings for the router (tests build their servers from it too)."""
    import uvicorn

    from .serverproto import protocol_class

    options: dict[str, Any] = dict(
        host=settings.host,
        port=settings.port,
        # uvloop when installed: the router's throughput is its event loop's and parser's.
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        # httptools, with the header deadline and size limit uvicorn lacks (serverproto.py).
        http=protocol_class(settings.header_timeout_seconds, settings.max_header_bytes),
        lifespan="on",
        # The router writes its own access log, one JSON line per tenant request (accesslog.py).
        access_log=False,
        log_level=settings.log_level,
        server_header=False,
        # The router never uses the client address, so uvicorn's X-Forwarded-For rewriting is pure cost.
        proxy_headers=False,
        backlog=4096,
        timeout_keep_alive=30,
        # In-flight streams get this long to finish on SIGTERM before they are cut; the operator
        # gives the pod this plus its preStop pause (operator/render/router.py).
        timeout_graceful_shutdown=settings.graceful_shutdown_seconds,
    )
    options.update(overrides)
    return uvicorn.Config(app, **options)


def listen_sockets(settings: RouterSettings) -> list[socket.socket]:
    """The tenant port and, when set, the metrics port: one server, one event loop, two sockets."""
    ports = [settings.port] + ([settings.metrics_port] if settings.metrics_port is not None else [])
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sockets = []
    for port in ports:
        sock = socket.create_server((settings.host, port), family=family, backlog=4096)
        sock.set_inheritable(True)
        sockets.append(sock)
    return sockets
