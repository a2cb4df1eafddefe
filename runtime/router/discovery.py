"""Kubernetes discovery: the router's ConfigMap, API-key Secret and the per-track EndpointSlices.

Each watched thing runs in its own daemon thread (the `kubernetes` client is synchronous): list,
then watch from the list's resourceVersion, and on any error (including 410 Gone) list again
after a bounded backoff. Results are handed to the event loop with `call_soon_threadsafe`, so the
request path never waits on the API server. The parsing helpers are pure and tested without a cluster.

With `--api-keys-dir` (the operator's router pods) the API-key Secret is not watched: the pod mounts
it as a volume and the keys are re-read from its files every few seconds, so neither the router nor
the operator needs to read Secrets through the API (docs/router.md).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import random
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .config import CANARY, STABLE, ConfigError, RouterConfig, parse_config_text_with_unknown
from .settings import RouterSettings
from .state import RouterState

log = logging.getLogger("pixtral_runtime.router.discovery")

CONFIG_KEY = "config.json"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
# The server ends each watch after this long; the thread re-lists then (and re-checks its stop flag).
WATCH_TIMEOUT_SECONDS = 30
# Client-side socket timeouts (connect, read). A watch that has been silent for longer than the
# server's own timeout plus this slack is a dead connection (a half-open TCP connection never
# errors by itself): the thread gives up on it and re-lists. Without them a half-open API
# connection froze backends, config and keys silently.
CONNECT_TIMEOUT_SECONDS = 5.0
LIST_READ_TIMEOUT_SECONDS = 15.0
WATCH_READ_SLACK_SECONDS = 10.0
MAX_BACKOFF_SECONDS = 30.0
# How often the mounted key files are re-read. The kubelet itself refreshes a Secret volume about
# once a minute, so this adds little to a rotation's delay.
KEY_FILES_POLL_SECONDS = 2.0


# ---- pure helpers ----------------------------------------------------------------------------------
def ready_backends(slices: Iterable[Mapping[str, Any]], *, port_name: str = "http",
                   fallback_port: int | None = None) -> list[str]:
    """Base URLs of the ready endpoints in a Service's EndpointSlices (API JSON shape).

    The port is the one named `port_name` (the runtime's `http` port); a nil `ready` condition
    counts as ready, as the EndpointSlice API asks consumers to do.
    """
    urls: list[str] = []
    for s in slices:
        port = None
        for p in s.get("ports") or ():
            if p.get("name") == port_name and p.get("port"):
                port = p["port"]
                break
        if port is None:
            port = fallback_port
        if port is None:
            continue
        ipv6 = s.get("addressType") == "IPv6"
        for endpoint in s.get("endpoints") or ():
            ready = (endpoint.get("conditions") or {}).get("ready")
            if ready is False or not endpoint.get("addresses"):
                continue
            address = endpoint["addresses"][0]
            host = f"[{address}]" if ipv6 else address
            urls.append(f"http://{host}:{port}")
    return sorted(set(urls))


def config_from_configmap(configmap: Mapping[str, Any], *, name: str) -> RouterConfig:
    data = configmap.get("data") or {}
    if CONFIG_KEY not in data:
        raise ConfigError(f"ConfigMap {name} has no key {CONFIG_KEY!r}")
    text = data[CONFIG_KEY]
    config, extra = parse_config_text_with_unknown(text, source=f"ConfigMap {name} {CONFIG_KEY}")
    if extra:
        log.warning("ConfigMap %s: ignoring unknown fields %s", name, ", ".join(extra))
    return config


def api_keys_from_secret(secret: Mapping[str, Any]) -> dict[str, str]:
    """tenant -> key from a Secret's base64 `data` (and plain `stringData`, if present)."""
    keys: dict[str, str] = {}
    for tenant, value in (secret.get("data") or {}).items():
        decoded = base64.b64decode(value).decode("utf-8").strip()
        if decoded:
            keys[tenant] = decoded
    for tenant, value in (secret.get("stringData") or {}).items():
        if value.strip():
            keys[tenant] = value.strip()
    return keys


def api_keys_from_files(directory: str) -> dict[str, str]:
    """tenant -> key from a Secret mounted as a volume: one file per data key. The kubelet's own
    entries (`..data` and the timestamped folder it points at) start with dots and are skipped."""
    keys: dict[str, str] = {}
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_file():
                continue
            with open(entry.path, encoding="utf-8") as f:
                value = f.read().strip()
            if value:
                keys[entry.name] = value
    return keys


def ready_endpoint_count(slices: Iterable[Mapping[str, Any]]) -> int:
    """Ready endpoints (distinct addresses) across a Service's EndpointSlices."""
    addresses = set()
    for endpoint_slice in slices:
        for endpoint in endpoint_slice.get("endpoints") or ():
            if (endpoint.get("conditions") or {}).get("ready") is False or not endpoint.get("addresses"):
                continue
            addresses.add(endpoint["addresses"][0])
    return len(addresses)


# ---- the watch threads -----------------------------------------------------------------------------
def backoff_seconds(failures: int, rng: random.Random) -> float:
    """Delay before the next list after `failures` failures in a row: doubling from 1 s up to
    MAX_BACKOFF_SECONDS, each drawn from its upper half, so that every router replica (and every
    watch of one) does not re-list at the same moment after an API server restart."""
    ceiling = min(MAX_BACKOFF_SECONDS, 0.5 * 2 ** min(failures, 8))
    return ceiling * rng.uniform(0.5, 1.0)


class _WatchThread:
    """list + watch one kind of object, forever, with backoff; `on_snapshot` gets the full current set."""

    def __init__(self, name: str, list_fn: Callable[..., Any], kwargs: dict[str, Any],
                 on_snapshot: Callable[[dict[str, dict]], None], serialize: Callable[[Any], dict], *,
                 watch_timeout: int = WATCH_TIMEOUT_SECONDS, connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
                 list_read_timeout: float = LIST_READ_TIMEOUT_SECONDS,
                 watch_read_slack: float = WATCH_READ_SLACK_SECONDS, rng: random.Random | None = None) -> None:
        self.name = name
        self._watch_timeout = watch_timeout
        self._list_timeout = (connect_timeout, list_read_timeout)
        self._watch_read_timeout = (connect_timeout, watch_timeout + watch_read_slack)
        self._rng = rng or random.Random()
        self._list_fn = list_fn
        self._kwargs = kwargs
        self._on_snapshot = on_snapshot
        self._serialize = serialize
        self._stop = threading.Event()
        self._watch: Any = None
        self._thread = threading.Thread(target=self._run, name=f"watch-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()

    def _run(self) -> None:
        from kubernetes import watch

        failures = 0
        while not self._stop.is_set():
            try:
                listing = self._list_fn(_request_timeout=self._list_timeout, **self._kwargs)
                objects = {}
                for item in listing.items:
                    obj = self._serialize(item)
                    objects[obj["metadata"]["name"]] = obj
                self._on_snapshot(dict(objects))
                failures = 0
                self._watch = watch.Watch()
                for event in self._watch.stream(
                    self._list_fn, resource_version=listing.metadata.resource_version,
                    timeout_seconds=self._watch_timeout, _request_timeout=self._watch_read_timeout, **self._kwargs,
                ):
                    if self._stop.is_set():
                        return
                    if event["type"] == "ERROR":
                        break  # typically 410 Gone: relist
                    obj = self._serialize(event["object"])
                    name = obj["metadata"]["name"]
                    if event["type"] == "DELETED":
                        objects.pop(name, None)
                    else:
                        objects[name] = obj
                    self._on_snapshot(dict(objects))
            except Exception as exc:  # the API server may be away for a while; keep trying, bounded
                if self._stop.is_set():
                    return  # stop() closed the stream under us
                failures += 1
                delay = backoff_seconds(failures, self._rng)
                log.warning("watch %s failed (%s: %s); retrying in %.1fs", self.name,
                            exc.__class__.__name__, str(exc)[:200], delay)
                self._stop.wait(delay)


class _KeyFilesWatch:
    """Re-reads the mounted API-key files on the event loop (a few small files on a tmpfs) and hands
    every changed set to `on_keys`. An unreadable folder keeps the last keys (none at first: the
    router then stays unready)."""

    def __init__(self, directory: str, on_keys: Callable[[dict[str, str]], None],
                 interval: float | None = None) -> None:
        self.name = f"files/{directory}"
        self._directory = directory
        self._on_keys = on_keys
        self._interval = KEY_FILES_POLL_SECONDS if interval is None else interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"watch-{self.name}")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        last: dict[str, str] | None = None
        failing = False
        while True:
            try:
                keys = api_keys_from_files(self._directory)
            except (OSError, UnicodeDecodeError) as exc:
                if not failing:
                    log.warning("cannot read the API keys in %s (%s); keeping the last ones",
                                self._directory, exc.__class__.__name__)
                failing = True
            else:
                failing = False
                if keys != last:
                    last = keys
                    self._on_keys(keys)
            await asyncio.sleep(self._interval)


class KubernetesDiscovery:
    """Feeds RouterState from the API: config, keys, ready backends; applied live."""

    def __init__(self, state: RouterState, settings: RouterSettings) -> None:
        if not settings.namespace or not settings.configmap:
            raise ConfigError("Kubernetes discovery needs --namespace and --configmap")
        self.state = state
        self.namespace = settings.namespace
        self.configmap = settings.configmap
        self.api_keys_dir = settings.api_keys_dir
        self._loop: asyncio.AbstractEventLoop | None = None
        self._config_watch: _WatchThread | None = None
        self._secret: tuple[str | None, _WatchThread | _KeyFilesWatch | None] = (None, None)
        self._slices: dict[str, tuple[str, _WatchThread]] = {}
        self._router_slices: tuple[str, _WatchThread] | None = None

    async def start(self) -> None:
        from kubernetes import client, config

        if os.environ.get("KUBECONFIG"):
            config.load_kube_config()
        else:
            config.load_incluster_config()
        self._loop = asyncio.get_running_loop()
        self._api_client = client.ApiClient()
        self._core = client.CoreV1Api(self._api_client)
        self._discovery = client.DiscoveryV1Api(self._api_client)
        self._config_watch = _WatchThread(
            f"configmap/{self.configmap}", self._core.list_namespaced_config_map,
            {"namespace": self.namespace, "field_selector": f"metadata.name={self.configmap}"},
            self._threadsafe(self._on_configmaps), self._api_client.sanitize_for_serialization,
        )
        self._config_watch.start()

    async def stop(self) -> None:
        watches = [self._config_watch, self._secret[1], *(w for _, w in self._slices.values()),
                   self._router_slices[1] if self._router_slices else None]
        for w in watches:
            if w is not None:
                w.stop()

    def _threadsafe(self, fn: Callable[[Any], None]) -> Callable[[Any], None]:
        def call(arg: Any) -> None:
            assert self._loop is not None
            self._loop.call_soon_threadsafe(fn, arg)

        return call

    # -- handlers, run on the event loop --
    def _on_configmaps(self, objects: dict[str, dict]) -> None:
        cm = objects.get(self.configmap)
        if cm is None:
            log.warning("ConfigMap %s/%s not found; keeping the last configuration", self.namespace, self.configmap)
            return
        try:
            config = config_from_configmap(cm, name=self.configmap)
        except (ConfigError, ValueError) as exc:
            log.error("ignoring invalid router configuration: %s", exc)
            return
        self.state.apply_config(config)
        self._sync_secret_watch(config)
        self._sync_slice_watches(config)
        self._sync_router_watch(config)

    def _sync_secret_watch(self, config: RouterConfig) -> None:
        wanted = config.tenancy.api_keys_secret
        current, watcher = self._secret
        if wanted == current:
            return
        if watcher is not None:
            watcher.stop()
        self._secret = (wanted, None)
        if wanted is None:
            self.state.apply_api_keys(None)
            return
        self.state.apply_api_keys(None)
        watcher: _WatchThread | _KeyFilesWatch
        if self.api_keys_dir:
            # The pod mounts the Secret the operator rendered into this config; when the config
            # names another one, the operator has changed the pod template too and new pods follow.
            watcher = _KeyFilesWatch(self.api_keys_dir, lambda keys, name=wanted: self._on_key_files(name, keys))
        else:
            watcher = _WatchThread(
                f"secret/{wanted}", self._core.list_namespaced_secret,
                {"namespace": self.namespace, "field_selector": f"metadata.name={wanted}"},
                self._threadsafe(lambda objs, name=wanted: self._on_secrets(name, objs)),
                self._api_client.sanitize_for_serialization,
            )
        self._secret = (wanted, watcher)
        watcher.start()

    def _on_key_files(self, name: str, keys: dict[str, str]) -> None:
        if self._secret[0] != name:
            return
        self.state.apply_api_keys(keys)

    def _on_secrets(self, name: str, objects: dict[str, dict]) -> None:
        if self._secret[0] != name:
            return  # a late event from a watch that was replaced
        secret = objects.get(name)
        self.state.apply_api_keys(api_keys_from_secret(secret) if secret else {})
        if secret is None:
            log.warning("API key Secret %s/%s not found: every request is refused until it exists",
                        self.namespace, name)

    def _sync_router_watch(self, config: RouterConfig) -> None:
        service = config.router_service
        if self._router_slices is not None and self._router_slices[0] == service:
            return
        if self._router_slices is not None:
            self._router_slices[1].stop()
            self._router_slices = None
        if service is None:
            self.state.set_router_replicas(1)
            return
        watcher = _WatchThread(
            f"endpointslices/{service}", self._discovery.list_namespaced_endpoint_slice,
            {"namespace": self.namespace, "label_selector": f"{SERVICE_NAME_LABEL}={service}"},
            self._threadsafe(lambda objs, svc=service: self._on_router_slices(svc, objs)),
            self._api_client.sanitize_for_serialization,
        )
        self._router_slices = (service, watcher)
        watcher.start()

    def _on_router_slices(self, service: str, objects: dict[str, dict]) -> None:
        if self._router_slices is None or self._router_slices[0] != service:
            return
        self.state.set_router_replicas(ready_endpoint_count(objects.values()))

    def _sync_slice_watches(self, config: RouterConfig) -> None:
        for track in (STABLE, CANARY):
            target = config.tracks.get(track)
            current = self._slices.get(track)
            if target is not None and current is not None and current[0] == target.service:
                continue
            if current is not None:
                current[1].stop()
                del self._slices[track]
            if target is None:
                self.state.set_backends(track, ())
                continue
            watcher = _WatchThread(
                f"endpointslices/{target.service}", self._discovery.list_namespaced_endpoint_slice,
                {"namespace": self.namespace, "label_selector": f"{SERVICE_NAME_LABEL}={target.service}"},
                self._threadsafe(
                    lambda objs, t=track, svc=target.service, port=target.port: self._on_slices(t, svc, port, objs)
                ),
                self._api_client.sanitize_for_serialization,
            )
            self._slices[track] = (target.service, watcher)
            watcher.start()

    def _on_slices(self, track: str, service: str, port: int, objects: dict[str, dict]) -> None:
        current = self._slices.get(track)
        if current is None or current[0] != service:
            return
        self.state.set_backends(track, ready_backends(objects.values(), fallback_port=port))
