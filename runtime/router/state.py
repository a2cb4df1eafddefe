"""The router's live state: configuration, API keys and ready backends, updated by discovery."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence

from .config import CANARY, STABLE, RouterConfig
from .metrics import RouterMetrics
from .placements import Placements
from .tenancy import Authenticator, TenantLimiter

log = logging.getLogger("pixtral_runtime.router")


class BackendPool:
    """Ready backends (base URLs) per track, plus a wake-up for requests held while none is ready."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.ready: dict[str, tuple[str, ...]] = {STABLE: (), CANARY: ()}
        self._ejected_until: dict[str, float] = {}
        self._changed = asyncio.Event()
        self._clock = clock

    def set_track(self, track: str, backends: Sequence[str]) -> None:
        new = tuple(dict.fromkeys(backends))
        if new == self.ready.get(track):
            return
        self.ready = {**self.ready, track: new}
        self._wake()

    def eject(self, backend: str, seconds: float) -> None:
        """Skip a backend that refused a connection for a while (static mode has no readiness)."""
        self._ejected_until[backend] = self._clock() + seconds

    def usable(self) -> Mapping[str, Sequence[str]]:
        if not self._ejected_until:
            return self.ready
        now = self._clock()
        for backend, until in list(self._ejected_until.items()):
            if until <= now:
                del self._ejected_until[backend]
                self._wake()
        if not self._ejected_until:
            return self.ready
        filtered = {t: tuple(b for b in bs if b not in self._ejected_until) for t, bs in self.ready.items()}
        # An ejected backend is still better than holding the request when it is all there is.
        if not any(filtered.values()):
            return self.ready
        return filtered

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_changed(self, timeout: float) -> None:
        event = self._changed
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            pass


class RouterState:
    def __init__(self, metrics: RouterMetrics, *, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config: RouterConfig | None = None
        self.api_keys: dict[str, str] | None = None
        self.authenticator = Authenticator(None, required=True)
        self.limiter: TenantLimiter | None = None
        self.pool = BackendPool(clock=clock)
        self.outstanding: dict[str, int] = {}
        self.rng = rng or random.Random()
        # The roundRobin strategy's turn counter (choice.choose_round_robin), one per router replica.
        self.turns = itertools.count()
        # Where imageAffinity sent each recent key (placements.py), one memory per router replica.
        self.placements = Placements()
        self._clock = clock
        self.metrics = metrics
        # Called with every backend of every track after a change (the app prunes per-backend state).
        self.on_backends_changed: Callable[[set[str]], None] | None = None
        # Called with each configuration once applied (the app rebuilds its tracer from it).
        self.on_config_applied: Callable[[RouterConfig], None] | None = None

    @property
    def ready(self) -> bool:
        if self.config is None:
            return False
        # With a key Secret configured, nobody could authenticate until its keys arrive.
        return not (self.config.tenancy.api_keys_secret and self.config.api_keys is None and self.api_keys is None)

    def apply_config(self, config: RouterConfig) -> None:
        self.config = config
        if self.limiter is None:
            self.limiter = TenantLimiter(config.tenancy, clock=self._clock)
        else:
            self.limiter.set_policy(config.tenancy)
        if config.backends is not None:
            for track in (STABLE, CANARY):
                self.pool.set_track(track, config.backends.get(track, ()))
        self._rebuild_authenticator()
        self.metrics.config_loaded.set(1)
        self._export_ready()
        if self.on_config_applied is not None:
            self.on_config_applied(config)
        log.info(
            "config applied: deployment=%s canary weight=%s tenants=%d auth=%s",
            config.deployment, config.canary_weight, len(config.tenancy.tenants),
            "on" if config.auth_required else "off",
        )

    def apply_api_keys(self, keys: Mapping[str, str] | None) -> None:
        self.api_keys = dict(keys) if keys is not None else None
        self._rebuild_authenticator()
        if self.api_keys is not None:
            # A count only: neither keys nor their tenants' names reach the log.
            log.info("API keys applied for %d tenant(s)", len(self.api_keys))

    def set_router_replicas(self, replicas: int) -> None:
        """Ready replicas of this router (its Service's endpoints): each enforces its share of the limits."""
        if self.limiter is not None:
            self.limiter.set_replicas(replicas)
        self.metrics.router_replicas.set(max(1, replicas))

    def set_backends(self, track: str, backends: Sequence[str]) -> None:
        self.pool.set_track(track, backends)
        self._export_ready()
        if self.on_backends_changed is not None:
            self.on_backends_changed({b for bs in self.pool.ready.values() for b in bs})
        log.info("ready backends of %s: %s", track, ", ".join(backends) or "none")

    def _export_ready(self) -> None:
        for track in (STABLE, CANARY):
            self.metrics.ready_backends.labels(track).set(len(self.pool.ready.get(track, ())))

    def _rebuild_authenticator(self) -> None:
        config = self.config
        if config is None:
            return
        keys = config.api_keys if config.api_keys is not None else self.api_keys
        self.authenticator = Authenticator(keys, required=config.auth_required)
