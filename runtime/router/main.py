"""`pixtral-runtime router`: parse settings, build the app, serve it with uvicorn."""

from __future__ import annotations

import importlib.util
import logging
import os
import resource
import sys

from .config import ConfigError
from .settings import SettingsError, settings_from

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
        from .config import load_config_file, unknown_fields

        try:
            config = load_config_file(settings.config_path)
        except ConfigError as exc:
            print(f"pixtral-runtime router: {exc}", file=sys.stderr)
            return 2
        import json

        with open(settings.config_path, "rb") as f:
            extra = unknown_fields(json.loads(f.read()))
        if extra:
            log.warning("ignoring unknown config fields: %s", ", ".join(extra))
        from dataclasses import replace

        settings = replace(settings, config=config)

    import uvicorn

    from .app import create_app

    _raise_fd_limit()
    app = create_app(settings)
    server_config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        # uvloop + httptools when installed: the router's throughput is its event loop's and parser's.
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
        lifespan="on",
        access_log=settings.access_log,
        log_level=settings.log_level,
        server_header=False,
        # The router never uses the client address, so uvicorn's X-Forwarded-For rewriting is pure cost.
        proxy_headers=False,
        backlog=4096,
        timeout_keep_alive=30,
        # In-flight streams get this long to finish on SIGTERM before they are cut.
        timeout_graceful_shutdown=30,
    )
    server = uvicorn.Server(server_config)
    server.run()
    # uvicorn sets `started` only after a successful lifespan startup and bind.
    return 0 if server.started else 1
