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
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from . import admission, dispatch, fairqueue, urlpolicy, usage
from .accesslog import AccessLog
from .body import BodyBudget, ClientDisconnected, Reservation, budget_for, read_body
from .choice import choose, choose_track
from .config import IMAGE_AFFINITY, TRACKS, RouterConfig, TracingPolicy, load_config_file
from .errors import (
    AdmissionError,
    MethodNotAllowed,
    NoBackendAvailable,
    NotFound,
    RequestTimeout,
    RouterError,
    UpstreamTimeout,
    UpstreamUnreachable,
    error_response,
)
from .gate import TrackGate
from .guard import Guard, RequestInfo
from .headers import DROP_REQUEST, DROP_RESPONSE, forwarded
from .internalkey import InternalKey
from .metrics import RouterMetrics
from .override import permitted_override
from .requestid import HEADER as REQUEST_ID_HEADER
from .requestid import accept_request_id, new_request_id
from .settings import RouterSettings
from .state import RouterState
from .tracing import TRACEPARENT, RequestTracer
from .upstream import UpstreamError, UpstreamPool, UpstreamResponse

log = logging.getLogger("pixtral_runtime.router")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

# Whole-body relay (one write, with Content-Length) below this size; larger or unsized answers stream.
_BUFFER_LIMIT = 1 << 20
CLIENT_CLOSED_REQUEST = 499
_TRACK_HEADER_VALUES = {track: track.encode() for track in TRACKS}
# Bodies from this size on (in practice: with images) are admitted in a worker thread.
_INLINE_ADMISSION_BYTES = 256 * 1024
# A remote image host must resolve within this long (urlpolicy.check_addresses).
_RESOLVE_TIMEOUT_SECONDS = 2.0


async def _send_simple(send: Send, status: int, body: bytes, content_type: bytes,
                       extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_error(send: Send, exc: RouterError, request: RequestInfo) -> None:
    status, headers, body = error_response(exc)
    if request.request_id is None:
        request.request_id = new_request_id()
    headers.append((REQUEST_ID_HEADER, request.request_id))
    request.response_bytes = len(body)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RouterApp:
    def __init__(self, settings: RouterSettings, *, state: RouterState | None = None,
                 discovery_factory: Callable[[RouterState, RouterSettings], Any] | None = None) -> None:
        self.settings = settings
        deployment = settings.config.deployment if settings.config else _deployment_from(settings)
        self.state = state or RouterState(RouterMetrics(deployment))
        self.metrics = self.state.metrics
        self.upstream: UpstreamPool | None = None
        self.internal_key = InternalKey(settings.internal_key_file)
        self.budget = BodyBudget(settings.body_budget_bytes or budget_for(settings.memory_limit_bytes))
        # backend URL -> (host, port, the URL as the x-pixtral-backend header value)
        self._backends: dict[str, tuple[str, int, bytes]] = {}
        self._discovery_factory = discovery_factory
        self._discovery: Any = None
        self._created = int(time.time())
        self._routes: dict[str, Callable[[Scope, Receive, Send, RequestInfo], Awaitable[None]]] = {
            "/v1/chat/completions": self._chat,
            "/v1/completions": self._completions,
            "/v1/models": self._models,
            "/healthz": self._healthz,
            "/readyz": self._readyz,
            "/metrics": self._metrics,
        }
        self.state.on_backends_changed = self._prune_backends
        # Fair queuing (fairqueue.py decides, gate.py waits): one gate per track.
        self._gates = {track: TrackGate() for track in TRACKS}
        for track, gate in self._gates.items():
            self.metrics.watch_queue(track, gate.queue.__len__)
        # Tenant requests only: the probes and /metrics are no tenant's (accesslog.py).
        self.access_log = AccessLog() if settings.access_log else None
        self._unlogged = {self._healthz, self._readyz, self._metrics}
        # Spans per tenant request (tracing.py); rebuilt when the configuration's policy changes.
        self.tracer: RequestTracer | None = None
        self._route_names = {handler: route for route, handler in self._routes.items()}
        self.state.on_config_applied = self._apply_tracing

    # ---- ASGI entry -------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = RequestInfo(time.perf_counter())
        path = scope["path"].rstrip("/") or "/"
        handler = self._routes.get(path)
        tracer = self.tracer
        if tracer is not None and handler in self._unlogged:
            tracer = None  # probes and /metrics are no tenant's requests
        if tracer is not None:
            request.span = tracer.start(scope["method"], self._route_names.get(handler),
                                        _header(scope, TRACEPARENT))
        try:
            await self._handle(scope, receive, send, request, path, handler)
        finally:
            if self.access_log is not None and handler not in self._unlogged:
                self.access_log.record(request, scope["method"], scope["path"])
            if tracer is not None:
                tracer.finish(request.span, request, scope["method"], scope["path"])

    async def _handle(self, scope: Scope, receive: Receive, send: Send, request: RequestInfo, path: str,
                      handler: Callable[[Scope, Receive, Send, RequestInfo], Awaitable[None]] | None) -> None:
        try:
            if handler is None or (self.settings.metrics_port is not None and not self._served_here(scope, path)):
                raise NotFound(f"Unknown path {scope['path'][:200]}.")
            await handler(scope, receive, send, request)
        except RouterError as exc:
            self._on_error(exc, request)
            if not request.response_started:
                await _send_error(send, exc, request)
        except ClientDisconnected:
            self._observe(request, CLIENT_CLOSED_REQUEST, None)
        except asyncio.CancelledError:
            if not request.client_gone:
                raise
            # Our own doing: the client left, the upstream call was cancelled with us.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            self._observe(request, CLIENT_CLOSED_REQUEST, None)
        except Exception:
            # A bug, not a domain refusal: still an OpenAI-shaped 500, and the traceback in the log.
            log.exception("unexpected error on %s", scope["path"])
            self._observe(request, 500, None)
            if not request.response_started:
                await _send_error(send, RouterError("Internal router error."), request)

    def _served_here(self, scope: Scope, path: str) -> bool:
        """/metrics only on the metrics port; on that port nothing else but the probes."""
        server = scope.get("server")
        on_metrics_port = bool(server) and server[1] == self.settings.metrics_port
        if path == "/metrics":
            return on_metrics_port
        return not on_metrics_port or path in ("/healthz", "/readyz")

    def _observe(self, request: RequestInfo, status: int, duration: float | None) -> None:
        request.status = status
        self.metrics.observe_request(request.tenant, request.track, status, duration)

    def _on_error(self, exc: RouterError, request: RequestInfo) -> None:
        if isinstance(exc, AdmissionError):
            self.metrics.reject(exc.reason)
        if exc.status >= 500:
            log.warning("%s %s: %s", exc.status, exc.code, exc.message)
        self._observe(request, exc.status, None)

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
        if self.access_log is not None:
            self.access_log.flush()
        if self.tracer is not None:
            tracer, self.tracer = self.tracer, None
            await asyncio.to_thread(tracer.shutdown)

    def _apply_tracing(self, config: RouterConfig) -> None:
        """A changed tracing policy takes effect for the next request, without a restart; the old
        tracer exports what it holds in a thread (its shutdown waits on the network)."""
        old = self.tracer
        policy = config.tracing
        if (old.policy if old is not None else TracingPolicy()) == policy:
            return
        self.tracer = None
        if policy.endpoint:
            resource = {"pixtral.deployment": config.deployment}
            if self.settings.namespace:
                resource["k8s.namespace.name"] = self.settings.namespace
            try:
                self.tracer = RequestTracer(policy, resource)
            except Exception:  # a broken exporter must not take the router down with it
                log.exception("tracing to %s could not start; requests are served untraced", policy.endpoint)
            else:
                log.info("tracing to %s (%s), sampling ratio %g", policy.endpoint, policy.protocol,
                         policy.sampling_ratio)
        elif old is not None:
            log.info("tracing off")
        if old is not None:
            threading.Thread(target=old.shutdown, name="tracer-shutdown", daemon=True).start()

    # ---- small endpoints --------------------------------------------------------------------------
    async def _healthz(self, scope: Scope, receive: Receive, send: Send, request: RequestInfo) -> None:
        await _send_simple(send, 200, b"ok\n", b"text/plain")

    async def _readyz(self, scope: Scope, receive: Receive, send: Send, request: RequestInfo) -> None:
        # Ready without backends: the router must take (and hold) requests while runtimes scale from zero.
        if self.state.ready:
            await _send_simple(send, 200, b"ready\n", b"text/plain")
        else:
            await _send_simple(send, 503, b"configuration not loaded\n", b"text/plain")

    async def _metrics(self, scope: Scope, receive: Receive, send: Send, request: RequestInfo) -> None:
        await _send_simple(send, 200, self.metrics.exposition(), self.metrics.content_type.encode())

    async def _models(self, scope: Scope, receive: Receive, send: Send, request: RequestInfo) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            raise MethodNotAllowed("Use GET for /v1/models.")
        config = self._config()
        request.request_id = accept_request_id(_header(scope, REQUEST_ID_HEADER))
        request.tenant = self.state.authenticator.authenticate(_header(scope, b"authorization"))
        if config.served_model_name:
            body = json.dumps({"object": "list", "data": [{
                "id": config.served_model_name, "object": "model", "created": self._created, "owned_by": "pixtral",
            }]}).encode()
            request.status = 200
            request.response_bytes = len(body)
            self.metrics.observe_request(request.tenant, "-", 200, None)
            await _send_simple(send, 200, body, b"application/json", [(REQUEST_ID_HEADER, request.request_id)])
            return
        await self._forward(scope, receive, send, request, b"", "stable", time.perf_counter())

    # ---- the proxied OpenAI endpoints -------------------------------------------------------------
    async def _chat(self, scope: Scope, receive: Receive, send: Send, request: RequestInfo) -> None:
        await self._proxy(scope, receive, send, request, "chat")

    async def _completions(self, scope: Scope, receive: Receive, send: Send, request: RequestInfo) -> None:
        await self._proxy(scope, receive, send, request, "completions")

    def _config(self) -> RouterConfig:
        config = self.state.config
        if config is None:
            raise NoBackendAvailable("The router has not loaded its configuration yet.", code="not_configured")
        return config

    async def _proxy(self, scope: Scope, receive: Receive, send: Send, request: RequestInfo, kind: str) -> None:
        """auth, size, override, rate, body, slot, admission, track, forward: in that order."""
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        if scope["method"] != "POST":
            raise MethodNotAllowed(f"Use POST for {scope['path']}.")
        state = self.state
        config = self._config()
        sticky_name = config.sticky_header.encode() if config.sticky_header else None
        override_name = config.override_header.encode()
        authorization = content_length = sticky = override = request_id = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
            elif name == b"content-length":
                content_length = value
            elif name == sticky_name:
                sticky = value
            elif name == override_name:
                override = value
            elif name == REQUEST_ID_HEADER:
                request_id = value
        request.request_id = accept_request_id(request_id)

        request.tenant = tenant = state.authenticator.authenticate(authorization)
        policy = config.admission
        declared = admission.check_content_length(content_length, policy)
        forced_track = permitted_override(override, config.override_header, tenant,
                                          config.tenancy.track_override_tenants)
        limiter = state.limiter
        # A token now (refusing a tenant over its rate costs no body); the concurrency slot only
        # once the body is in, so a client trickling its body holds memory budget, never a slot.
        limiter.check_slot(tenant)
        limiter.check_tokens(tenant)
        limiter.take_token(tenant)
        task = asyncio.current_task()
        assert task is not None
        now = loop.time()
        guard = Guard(task, request, receive, deadline=now + config.request_timeout_seconds,
                      body_deadline=now + self.settings.body_timeout_seconds)
        reservation = Reservation(self.budget)
        entered = False
        tap: usage.Tap | None = None
        try:
            try:
                body = await read_body(receive, policy.max_body_bytes, declared, reservation)
                request.request_bytes = len(body)
                limiter.enter(tenant)
                entered = True
                guard.body_received()
                affine = config.routing.strategy == IMAGE_AFFINITY and kind == "chat"
                if len(body) < _INLINE_ADMISSION_BYTES:
                    admitted = admission.admit_request(kind, body, policy, affinity=affine)
                else:
                    # Parsing megabytes of JSON (and hashing the images for the affinity key) takes
                    # long enough to stall every other request on this event loop; in a thread, in
                    # short C calls (scan.py), the loop keeps its turns (main.py sets a 1 ms GIL
                    # switch interval; hashlib releases the GIL for large inputs).
                    admitted = await asyncio.to_thread(
                        admission.admit_request, kind, body, policy, affinity=affine)
                for host in admitted.hosts:
                    await _check_host(loop, host)
                if admitted.images:
                    request.images, request.pixels = admitted.images, admitted.pixels
                    limiter.take_images(tenant, admitted.images, admitted.pixels / 1e6)
                    self.metrics.tenant_images(tenant, admitted.images, admitted.pixels)
                track = choose_track(
                    canary_weight=config.canary_weight,
                    rng=state.rng, sticky_value=sticky, override=forced_track,
                )
                body, added_usage = usage.ask_for_usage(body, admitted.body)
                tap = request.tap = usage.tap_for(admitted.body, added_usage)
                gate = await self._fair_turn(config, track, tenant)
                try:
                    await self._forward_with_retry(scope, send, request, body, track, started, admitted.key, tap)
                finally:
                    if gate is not None:
                        gate.release()
            except asyncio.CancelledError:
                if not guard.ours():
                    raise  # the client left (handled by the caller), or a cancellation not of our making
                if guard.reading_body:
                    raise RequestTimeout(
                        f"The request body did not arrive within {self.settings.body_timeout_seconds:g}s."
                    ) from None
                self._timed_out(request, config, started)
        finally:
            guard.stop()
            reservation.release()
            if entered:
                limiter.release(tenant)
            if tap is not None:
                self._account(tenant, tap)

    def _account(self, tenant: str, tap: usage.Tap) -> None:
        """After the answer: the engine's token counts to the tenant's counters and budget."""
        if tap.reported:
            self.metrics.tenant_tokens(tenant, tap.prompt, tap.completion)
        self.state.limiter.debit_tokens(tenant, tap.tokens)

    async def _fair_turn(self, config: RouterConfig, track: str, tenant: str) -> TrackGate | None:
        """Wait for the tenant's turn while every backend of the track is at its concurrency target
        (docs/router.md, "Fair queuing"); the gate to release after the request, or None."""
        policy = config.fair_queuing
        if not policy.backend_concurrency:
            return None
        state = self.state
        limiter = state.limiter
        capacity = fairqueue.capacity(len(state.pool.ready.get(track, ())), policy.backend_concurrency,
                                      limiter.replicas)
        gate = self._gates[track]
        held = await gate.acquire(tenant, capacity, limiter.limits_for(tenant).weight, policy)
        return gate if held else None

    def _timed_out(self, request: RequestInfo, config: RouterConfig, started: float) -> None:
        if request.response_started:
            # Headers are out: the only honest signal left is to cut the stream short.
            log.warning("request exceeded %gs mid-response; cut", config.request_timeout_seconds)
            self._observe(request, 504, time.perf_counter() - started)
            return
        raise UpstreamTimeout(f"The backend did not answer within {config.request_timeout_seconds:g}s.") from None

    async def _wait_for_backend(self, track: str, exclude: list[str], key: int | None) -> tuple[str, str]:
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
                choice = self._pick(track, exclude, key)
                if choice is not None:
                    return choice
        finally:
            gauge.dec()

    def _pick(self, track: str, exclude: list[str], key: int | None) -> tuple[str, str] | None:
        """One choice under the configured strategy (`choice.choose`). Where an affinity key was first
        placed is remembered, so that its next requests find it (placements.py); a spill past a busy
        backend leaves the memory as it was, and the key goes back once that backend has room."""
        state = self.state
        routing = self._config().routing
        remembered = state.placements.get(key) if key is not None else None
        choice = choose(track, state.pool.usable(), state.outstanding, state.rng, exclude, key=key,
                        epsilon=routing.epsilon, strategy=routing.strategy, turn=next(state.turns),
                        remembered=remembered, first_sighting=key is not None and remembered is None)
        if choice is not None and key is not None and routing.strategy == IMAGE_AFFINITY:
            state.placements.record(key, remembered or choice[1])
        return choice

    def _backend(self, backend: str) -> tuple[str, int, bytes]:
        parsed = self._backends.get(backend)
        if parsed is None:
            host, _, port = backend.split("://", 1)[1].rstrip("/").rpartition(":")
            parsed = self._backends[backend] = (host.strip("[]"), int(port), backend.encode())
        return parsed

    def _prune_backends(self, current: set[str]) -> None:
        """Forget what was kept per backend once it is in no track (pods come and go)."""
        gone = [b for b in self._backends if b not in current and not self.state.outstanding.get(b)]
        for backend in gone:
            del self._backends[backend]
        for backend in [b for b, n in self.state.outstanding.items() if not n and b not in current]:
            del self.state.outstanding[backend]
        self.metrics.forget_backends(current)
        self.state.placements.forget_backends(current)
        if self.upstream is not None:
            self.upstream.forget({self._backend(b)[:2] for b in current})

    async def _forward(self, scope: Scope, receive: Receive, send: Send, request: RequestInfo, body: bytes,
                       track: str, started: float) -> None:
        """Forward a request without a body (/v1/models) under the request timeout."""
        config = self._config()
        task = asyncio.current_task()
        assert task is not None
        now = asyncio.get_running_loop().time()
        guard = Guard(task, request, receive, deadline=now + config.request_timeout_seconds, body_deadline=now)
        guard.body_received()
        try:
            await self._forward_with_retry(scope, send, request, body, track, started)
        except asyncio.CancelledError:
            if not guard.ours():
                raise
            self._timed_out(request, config, started)
        finally:
            guard.stop()

    async def _forward_with_retry(self, scope: Scope, send: Send, request: RequestInfo, body: bytes,
                                  track: str, started: float, key: int | None = None,
                                  tap: usage.Tap | None = None) -> None:
        """Pick a backend, attempt, and carry out `dispatch.decide` on a failure. `key`: the
        request's affinity key (None: least outstanding); a retry walks on from the refused
        backend along the ring."""
        state = self.state
        pool = self.upstream
        assert pool is not None, "startup() creates the upstream pool"
        method = scope["method"].encode()
        target = scope["raw_path"] if scope.get("raw_path") else scope["path"].encode()
        if scope.get("query_string"):
            target = target + b"?" + scope["query_string"]
        # The tenant's Authorization is dropped; vLLM gets the internal key instead (internalkey.py).
        headers = forwarded(scope["headers"], DROP_REQUEST) + self.internal_key.headers()
        # The request ID the router accepted or made: vLLM names the request by it (requestid.py).
        headers.append((REQUEST_ID_HEADER, request.request_id or new_request_id()))
        if request.span is not None:
            headers.append((TRACEPARENT, RequestTracer.traceparent(request.span)))
        exclude: list[str] = []
        outstanding = state.outstanding
        for attempt in range(dispatch.MAX_ATTEMPTS):
            choice = self._pick(track, exclude, key)
            if choice is None:
                if attempt:
                    raise UpstreamUnreachable(
                        f"Backend {exclude[0]} refused the connection and no other backend is ready."
                    )
                choice = await self._wait_for_backend(track, exclude, key)
            served_track, backend = choice
            request.track = served_track
            request.backend = backend
            outstanding[backend] = outstanding.get(backend, 0) + 1
            self.metrics.backend_started(served_track, backend)
            fallback = self.metrics.fallback_by_track[track] if served_track != track else None
            if fallback is not None:
                fallback.inc()
            try:
                host, port, _ = self._backend(backend)
                try:
                    response = await pool.request(host, port, method, target, headers, body)
                except UpstreamError as exc:
                    step = dispatch.decide(dispatch.classify(exc), attempt)
                    if step.eject:
                        state.pool.eject(backend, self.settings.eject_seconds)
                    log.warning("%s%s", exc, "; retrying on another backend" if step.retry else "")
                    if not step.retry:
                        if dispatch.classify(exc) is dispatch.Failure.CONNECT:
                            exclude.append(backend)
                            raise UpstreamUnreachable(
                                f"Backends {', '.join(exclude)} refused the connection."
                            ) from None
                        raise UpstreamUnreachable(f"Backend {backend} failed: {exc}") from None
                    exclude.append(backend)
                    self.metrics.retried(served_track)
                    continue
                try:
                    await self._relay(response, send, request, served_track, backend, started, method, tap)
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

    async def _relay(self, response: UpstreamResponse, send: Send, request: RequestInfo, track: str,
                     backend: str, started: float, method: bytes = b"POST", tap: usage.Tap | None = None) -> None:
        headers = forwarded(response.headers, DROP_RESPONSE)
        headers.append((b"x-pixtral-track", _TRACK_HEADER_VALUES.get(track) or track.encode()))
        if request.request_id is not None:
            headers.append((REQUEST_ID_HEADER, request.request_id))
        if self.settings.debug_headers:
            headers.append((b"x-pixtral-backend", self._backend(backend)[2]))
        length = response.content_length
        metrics = self.metrics
        try:
            if length is not None and length <= _BUFFER_LIMIT or method == b"HEAD":
                payload = await response.read()
                metrics.observe_ttfb(track, time.perf_counter() - started)
                if tap is not None:
                    payload = tap.body(payload)
                shown = length if method == b"HEAD" and length is not None else len(payload)
                headers.append((b"content-length", str(shown).encode()))
                request.response_started = True
                await send({"type": "http.response.start", "status": response.status, "headers": headers})
                request.response_done = True
                request.response_bytes = len(payload)
                await send({"type": "http.response.body", "body": payload})
            else:
                if length is not None:
                    headers.append((b"content-length", str(length).encode()))
                request.response_started = True
                await send({"type": "http.response.start", "status": response.status, "headers": headers})
                first = True
                sent = 0
                async for chunk in response.chunks():
                    if first:
                        metrics.observe_ttfb(track, time.perf_counter() - started)
                        first = False
                    if tap is not None:
                        chunk = tap.feed(chunk)  # a usage event the client did not ask for is left out
                        if not chunk:
                            continue
                    sent += len(chunk)
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                request.response_done = True
                last = tap.finish() if tap is not None else b""
                request.response_bytes = sent + len(last)
                await send({"type": "http.response.body", "body": last})
        except UpstreamError as exc:
            if not request.response_started:
                raise UpstreamUnreachable(f"Backend {backend} failed: {exc}") from None
            log.warning("stream from %s broke: %s", backend, exc)
            request.response_done = False
            self._observe(request, 502, time.perf_counter() - started)
            return
        self._observe(request, response.status, time.perf_counter() - started)


async def _check_host(loop: asyncio.AbstractEventLoop, host: str) -> None:
    """Resolve a remote image host and refuse it unless every address is public."""
    try:
        async with asyncio.timeout(_RESOLVE_TIMEOUT_SECONDS):
            infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError):
        infos = []
    urlpolicy.check_addresses(host, [info[4][0] for info in infos])


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
