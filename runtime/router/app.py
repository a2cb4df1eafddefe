"""The router as a plain ASGI application, built by `create_app(settings)`.

The hot path is deliberately framework-free: a dict lookup for the route, one pass over the
request headers, the pure decisions (tenancy, admission, track, backend), then a lean keep-alive
HTTP/1.1 client (`upstream.py`) streaming the backend's answer through chunk by chunk. The
router's throughput on one core is bounded by exactly these per-request costs.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from . import admission
from .choice import choose_backend, choose_track, parse_override
from .config import TRACKS, RouterConfig, load_config_file
from .errors import (
    AdmissionError,
    MethodNotAllowed,
    NoBackendAvailable,
    NotFound,
    RouterError,
    UpstreamTimeout,
    UpstreamUnreachable,
    error_response,
)
from .metrics import RouterMetrics
from .settings import RouterSettings
from .state import RouterState
from .upstream import UpstreamConnectError, UpstreamError, UpstreamPool, UpstreamResponse

log = logging.getLogger("pixtral_runtime.router")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

# Hop-by-hop headers (RFC 9110 7.6.1) and the ones the router sets itself are not forwarded.
_DROP_REQUEST_HEADERS = frozenset(
    {b"host", b"connection", b"keep-alive", b"proxy-authorization", b"te", b"trailer", b"transfer-encoding",
     b"upgrade", b"content-length", b"authorization", b"expect"}
)
_DROP_RESPONSE_HEADERS = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"trailer", b"upgrade", b"date", b"server",
     b"content-length"}
)
# Whole-body relay (one write, with Content-Length) below this size; larger or unsized answers stream.
_BUFFER_LIMIT = 1 << 20
CLIENT_CLOSED_REQUEST = 499
_TRACK_HEADER_VALUES = {track: track.encode() for track in TRACKS}
# A request still running after this long gets a task watching for its client to leave.
_WATCH_AFTER_SECONDS = 0.05
# Bodies from this size on (in practice: with images) are admitted in a worker thread.
_INLINE_ADMISSION_BYTES = 256 * 1024


class _Request:
    """What the error path and metrics need to know about one request."""

    __slots__ = ("tenant", "track", "response_started", "response_done", "client_gone")

    def __init__(self) -> None:
        self.tenant = "-"
        self.track = "-"
        self.response_started = False
        self.response_done = False
        self.client_gone = False


async def _send_simple(send: Send, status: int, body: bytes, content_type: bytes,
                       extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _Guard:
    """The request's timeout and, once it has run a while, a watch for the client leaving.

    One timer per request: it fires after `_WATCH_AFTER_SECONDS` (or at the deadline, if that is
    sooner), starts the watcher task and re-arms itself for the deadline. Most requests end before
    it fires, and a cancelled timer costs far less than a task and `asyncio.timeout()`.
    """

    __slots__ = ("task", "request", "receive", "cancelling", "expired", "watcher", "deadline", "timer")

    def __init__(self, task: asyncio.Task, request: _Request, receive: Receive, timeout: float) -> None:
        self.task = task
        self.request = request
        self.receive = receive
        self.cancelling = task.cancelling()
        self.expired = False
        self.watcher: asyncio.Task | None = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        self.deadline = now + timeout
        self.timer = loop.call_at(min(self.deadline, now + _WATCH_AFTER_SECONDS), self._fire)

    def _fire(self) -> None:
        if self.watcher is None:
            self.watcher = asyncio.ensure_future(self._watch())
        loop = asyncio.get_running_loop()
        if loop.time() < self.deadline:
            self.timer = loop.call_at(self.deadline, self._fire)
        else:
            self.expired = True
            self.task.cancel()

    async def _watch(self) -> None:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                if not self.request.response_done:
                    self.request.client_gone = True
                    self.task.cancel()
                return

    def stop(self) -> None:
        self.timer.cancel()
        if self.watcher is not None:
            self.watcher.cancel()


class ClientDisconnected(Exception):
    """The client closed the connection before its request body arrived."""


async def _read_body(receive: Receive, limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise admission.body_too_large(size, limit)
        parts.append(chunk)
        more = message.get("more_body", False)
    return parts[0] if len(parts) == 1 else b"".join(parts)


class RouterApp:
    def __init__(self, settings: RouterSettings, *, state: RouterState | None = None,
                 discovery_factory: Callable[[RouterState, RouterSettings], Any] | None = None) -> None:
        self.settings = settings
        deployment = settings.config.deployment if settings.config else _deployment_from(settings)
        self.state = state or RouterState(RouterMetrics(deployment))
        self.metrics = self.state.metrics
        self.upstream: UpstreamPool | None = None
        # backend URL -> (host, port, the URL as the x-pixtral-backend header value)
        self._backends: dict[str, tuple[str, int, bytes]] = {}
        self._discovery_factory = discovery_factory
        self._discovery: Any = None
        self._created = int(time.time())
        self._routes: dict[str, Callable[[Scope, Receive, Send, _Request], Awaitable[None]]] = {
            "/v1/chat/completions": self._chat,
            "/v1/completions": self._completions,
            "/v1/models": self._models,
            "/healthz": self._healthz,
            "/readyz": self._readyz,
            "/metrics": self._metrics,
        }

    # ---- ASGI entry -------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = _Request()
        handler = self._routes.get(scope["path"].rstrip("/") or "/")
        try:
            if handler is None:
                raise NotFound(f"Unknown path {scope['path']}.")
            await handler(scope, receive, send, request)
        except RouterError as exc:
            self._on_error(exc, request)
            if not request.response_started:
                status, headers, body = error_response(exc)
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": body})
        except ClientDisconnected:
            self.metrics.observe_request(request.tenant, request.track, CLIENT_CLOSED_REQUEST, None)
        except asyncio.CancelledError:
            if not request.client_gone:
                raise
            # Our own doing: the client left, the upstream call was cancelled with us.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            self.metrics.observe_request(request.tenant, request.track, CLIENT_CLOSED_REQUEST, None)
        except Exception:
            # A bug, not a domain refusal: still an OpenAI-shaped 500, and the traceback in the log.
            log.exception("unexpected error on %s", scope["path"])
            exc = RouterError("Internal router error.")
            self.metrics.observe_request(request.tenant, request.track, 500, None)
            if not request.response_started:
                status, headers, body = error_response(exc)
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": body})

    def _on_error(self, exc: RouterError, request: _Request) -> None:
        if isinstance(exc, AdmissionError):
            self.metrics.reject(exc.reason)
        if exc.status >= 500:
            log.warning("%s %s: %s", exc.status, exc.code, exc.message)
        self.metrics.observe_request(request.tenant, request.track, exc.status, None)

    # ---- lifespan -----------------------------------------------------------------------------
    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:  # the server must refuse to start, with the reason
                    log.exception("router startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        self.upstream = UpstreamPool(
            keepalive_seconds=self.settings.upstream_keepalive_seconds,
            connect_timeout=self.settings.upstream_connect_timeout_seconds,
        )
        settings = self.settings
        if settings.config is not None:
            self.state.apply_config(settings.config)
        elif settings.config_path:
            self.state.apply_config(load_config_file(settings.config_path))
        if self._discovery_factory is not None:
            self._discovery = self._discovery_factory(self.state, settings)
            await self._discovery.start()
        # Everything alive now (modules, config, metrics) lives as long as the process: moved out of
        # the collector's reach, later full collections only walk what requests allocate.
        gc.collect()
        gc.freeze()

    async def shutdown(self) -> None:
        if self._discovery is not None:
            await self._discovery.stop()
        if self.upstream is not None:
            self.upstream.close()

    # ---- small endpoints --------------------------------------------------------------------------
    async def _healthz(self, scope: Scope, receive: Receive, send: Send, request: _Request) -> None:
        await _send_simple(send, 200, b"ok\n", b"text/plain")

    async def _readyz(self, scope: Scope, receive: Receive, send: Send, request: _Request) -> None:
        # Ready without backends: the router must take (and hold) requests while runtimes scale from zero.
        if self.state.ready:
            await _send_simple(send, 200, b"ready\n", b"text/plain")
        else:
            await _send_simple(send, 503, b"configuration not loaded\n", b"text/plain")

    async def _metrics(self, scope: Scope, receive: Receive, send: Send, request: _Request) -> None:
        await _send_simple(send, 200, self.metrics.exposition(), self.metrics.content_type.encode())

    async def _models(self, scope: Scope, receive: Receive, send: Send, request: _Request) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            raise MethodNotAllowed("Use GET for /v1/models.")
        config = self._config()
        request.tenant = self.state.authenticator.authenticate(_header(scope, b"authorization"))
        if config.served_model_name:
            body = json.dumps({"object": "list", "data": [{
                "id": config.served_model_name, "object": "model", "created": self._created, "owned_by": "pixtral",
            }]}).encode()
            self.metrics.observe_request(request.tenant, "-", 200, None)
            await _send_simple(send, 200, body, b"application/json")
            return
        await self._forward(scope, receive, send, request, b"", "stable", time.perf_counter())

    # ---- the proxied OpenAI endpoints -------------------------------------------------------------
    async def _chat(self, scope: Scope, receive: Receive, send: Send, request: _Request) -> None:
        await self._proxy(scope, receive, send, request, "chat")

    async def _completions(self, scope: Scope, receive: Receive, send: Send, request: _Request) -> None:
        await self._proxy(scope, receive, send, request, "completions")

    def _config(self) -> RouterConfig:
        config = self.state.config
        if config is None:
            raise NoBackendAvailable("The router has not loaded its configuration yet.", code="not_configured")
        return config

    async def _proxy(self, scope: Scope, receive: Receive, send: Send, request: _Request, kind: str) -> None:
        started = time.perf_counter()
        if scope["method"] != "POST":
            raise MethodNotAllowed(f"Use POST for {scope['path']}.")
        state = self.state
        config = self._config()
        sticky_name = config.sticky_header.encode() if config.sticky_header else None
        override_name = config.override_header.encode()
        authorization = content_length = sticky = override = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
            elif name == b"content-length":
                content_length = value
            elif name == sticky_name:
                sticky = value
            elif name == override_name:
                override = value

        request.tenant = state.authenticator.authenticate(authorization)
        policy = config.admission
        admission.check_content_length(content_length, policy)
        forced_track = parse_override(override, config.override_header)
        limiter = state.limiter
        limiter.acquire(request.tenant)
        try:
            body = await _read_body(receive, policy.max_body_bytes)
            if len(body) < _INLINE_ADMISSION_BYTES:
                admission.admit(kind, body, policy)
            else:
                # Parsing megabytes of JSON takes long enough to stall every other request on this
                # event loop; in a thread the loop keeps its turns (the GIL switches every 5 ms).
                await asyncio.to_thread(admission.admit, kind, body, policy)
            track = choose_track(
                canary_weight=config.canary_weight,
                rng=state.rng, sticky_value=sticky, override=forced_track,
            )
            await self._forward(scope, receive, send, request, body, track, started)
        finally:
            limiter.release(request.tenant)

    async def _wait_for_backend(self, track: str, exclude: list[str]) -> tuple[str, str]:
        state = self.state
        config = self._config()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + config.pending_timeout_seconds
        gauge = self.metrics.pending_by_track[track]
        gauge.inc()
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise NoBackendAvailable(
                        f"No ready backend for deployment {config.deployment!r} within "
                        f"{config.pending_timeout_seconds:g}s; it may be scaling up from zero, retry later."
                    )
                await state.pool.wait_changed(remaining)
                choice = choose_backend(track, state.pool.usable(), state.outstanding, state.rng, exclude)
                if choice is not None:
                    return choice
        finally:
            gauge.dec()

    def _backend(self, backend: str) -> tuple[str, int, bytes]:
        parsed = self._backends.get(backend)
        if parsed is None:
            host, _, port = backend.split("://", 1)[1].rstrip("/").rpartition(":")
            parsed = self._backends[backend] = (host.strip("[]"), int(port), backend.encode())
        return parsed

    async def _forward(self, scope: Scope, receive: Receive, send: Send, request: _Request, body: bytes,
                       track: str, started: float) -> None:
        """Forward under the request timeout, cancelling the upstream call if the client leaves (`_Guard`)."""
        config = self._config()
        task = asyncio.current_task()
        assert task is not None
        guard = _Guard(task, request, receive, config.request_timeout_seconds)
        try:
            await self._forward_with_retry(scope, send, request, body, track, started)
        except asyncio.CancelledError:
            if not guard.expired or task.uncancel() > guard.cancelling:
                raise  # the client left (handled by the caller), or a cancellation not of our making
            if request.response_started:
                # Headers are out: the only honest signal left is to cut the stream short.
                log.warning("request exceeded %gs mid-response; cut", config.request_timeout_seconds)
                self.metrics.observe_request(request.tenant, request.track, 504, time.perf_counter() - started)
                return
            raise UpstreamTimeout(
                f"The backend did not answer within {config.request_timeout_seconds:g}s."
            ) from None
        finally:
            guard.stop()

    async def _forward_with_retry(self, scope: Scope, send: Send, request: _Request, body: bytes,
                                  track: str, started: float) -> None:
        state = self.state
        pool = self.upstream
        assert pool is not None, "startup() creates the upstream pool"
        method = scope["method"].encode()
        target = scope["raw_path"] if scope.get("raw_path") else scope["path"].encode()
        if scope.get("query_string"):
            target = target + b"?" + scope["query_string"]
        headers = [(name, value) for name, value in scope["headers"] if name not in _DROP_REQUEST_HEADERS]
        exclude: list[str] = []
        outstanding = state.outstanding
        for attempt in (0, 1):
            choice = choose_backend(track, state.pool.usable(), outstanding, state.rng, exclude)
            if choice is None:
                if attempt:
                    raise UpstreamUnreachable(
                        f"Backend {exclude[0]} refused the connection and no other backend is ready."
                    )
                choice = await self._wait_for_backend(track, exclude)
            served_track, backend = choice
            request.track = served_track
            outstanding[backend] = outstanding.get(backend, 0) + 1
            self.metrics.backend_started(served_track, backend)
            fallback = self.metrics.fallback_by_track[track] if served_track != track else None
            if fallback is not None:
                fallback.inc()
            try:
                host, port, _ = self._backend(backend)
                try:
                    response = await pool.request(host, port, method, target, headers, body)
                except UpstreamConnectError as exc:
                    state.pool.eject(backend, self.settings.eject_seconds)
                    log.warning("%s%s", exc, "; retrying on another backend" if not attempt else "")
                    exclude.append(backend)
                    if not attempt:
                        self.metrics.retried(served_track)
                    continue
                except UpstreamError as exc:
                    raise UpstreamUnreachable(f"Backend {backend} failed: {exc}") from None
                try:
                    await self._relay(response, send, request, served_track, backend, started)
                finally:
                    # An unfinished body (client gone, error, timeout) closes the connection instead
                    # of pooling it, which is what tells the backend to abort the generation.
                    response.release()
                return
            finally:
                outstanding[backend] -= 1
                self.metrics.backend_finished(served_track, backend)
                if fallback is not None:
                    fallback.dec()
        raise UpstreamUnreachable(f"Backends {', '.join(exclude)} refused the connection.")

    async def _relay(self, response: UpstreamResponse, send: Send, request: _Request, track: str,
                     backend: str, started: float) -> None:
        headers = [(k, v) for k, v in response.headers if k not in _DROP_RESPONSE_HEADERS]
        headers.append((b"x-pixtral-track", _TRACK_HEADER_VALUES.get(track) or track.encode()))
        headers.append((b"x-pixtral-backend", self._backend(backend)[2]))
        length = response.content_length
        metrics = self.metrics
        try:
            if length is not None and length <= _BUFFER_LIMIT:
                payload = await response.read()
                metrics.observe_ttfb(track, time.perf_counter() - started)
                headers.append((b"content-length", str(len(payload)).encode()))
                request.response_started = True
                await send({"type": "http.response.start", "status": response.status, "headers": headers})
                request.response_done = True
                await send({"type": "http.response.body", "body": payload})
            else:
                if length is not None:
                    headers.append((b"content-length", str(length).encode()))
                request.response_started = True
                await send({"type": "http.response.start", "status": response.status, "headers": headers})
                first = True
                async for chunk in response.chunks():
                    if first:
                        metrics.observe_ttfb(track, time.perf_counter() - started)
                        first = False
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                request.response_done = True
                await send({"type": "http.response.body", "body": b""})
        except UpstreamError as exc:
            if not request.response_started:
                raise UpstreamUnreachable(f"Backend {backend} failed: {exc}") from None
            log.warning("stream from %s broke: %s", backend, exc)
            request.response_done = False
            metrics.observe_request(request.tenant, track, 502, time.perf_counter() - started)
            return
        metrics.observe_request(request.tenant, track, response.status, time.perf_counter() - started)


def _header(scope: Scope, wanted: bytes) -> bytes | None:
    for name, value in scope["headers"]:
        if name == wanted:
            return value
    return None


def _deployment_from(settings: RouterSettings) -> str:
    name = settings.configmap or "pixtral"
    return name[: -len("-router")] if name.endswith("-router") else name


def create_app(settings: RouterSettings, **kwargs: Any) -> RouterApp:
    """The router ASGI app; nothing happens until the server runs its lifespan."""
    if "discovery_factory" not in kwargs and settings.mode == "kubernetes":
        from .discovery import KubernetesDiscovery

        kwargs["discovery_factory"] = KubernetesDiscovery
    return RouterApp(settings, **kwargs)
