"""kopf registration for PixtralDeployment: thin wrappers around reconcile() and the autoscaler."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException
from pixtral_operator import metrics
from pixtral_operator.cache import ObjectCache
from pixtral_operator.canary_loop import CanaryLoop
from pixtral_operator.children import KIND_NOT_YET_KNOWN, retry_after, retry_delay
from pixtral_operator.handlers.watch import register_watches
from pixtral_operator.inflight import InFlight
from pixtral_operator.k8s import Kube
from pixtral_operator.reconcile import Outcome, reconcile
from pixtral_operator.requeue import Requeue
from pixtral_operator.scale_loop import Scaler
from pixtral_operator.settings import OperatorSettings
from pixtral_operator.spec import GROUP, KIND, PLURAL, VERSION

log = logging.getLogger(__name__)


# Waiting longer than this for another reconcile of the same object means that one is stuck on the
# API server; kopf retries the change later.
INFLIGHT_WAIT_SECONDS = 120.0
# An autoscaler tick longer than this many intervals is logged as a warning.
SLOW_TICK_FACTOR = 2.0
_clock = time.monotonic  # the tick timer's clock (a test replaces it)


def run_reconcile(
    body: Any, kube: Kube, settings: OperatorSettings, inflight: InFlight, *, retry: int = 0, wait: bool = True
) -> Outcome | None:
    """One reconcile, never two at once for one object. `wait` False (the resync): skip the pass when
    another reconcile of the object is running, it reads the same state. A refused apply is in the
    status and an Event already; the retry backs off (children.retry_delay)."""
    plain = _plain(body)
    namespace, name = plain["metadata"]["namespace"], plain["metadata"]["name"]
    with inflight.hold((namespace, name), timeout=INFLIGHT_WAIT_SECONDS if wait else 0) as mine:
        if not mine:
            if wait:
                raise kopf.TemporaryError("another reconcile of this object is still running", delay=retry_delay(retry))
            return None
        started = time.monotonic()
        try:
            outcome = reconcile(plain, kube, settings)
        except ApiException as exc:
            metrics.RECONCILES.labels(namespace, "error").inc()
            raise kopf.TemporaryError(f"Kubernetes API error {exc.status}: {exc.reason}", delay=retry_delay(retry)) from exc
        finally:
            metrics.RECONCILE_SECONDS.observe(time.monotonic() - started)
    metrics.RECONCILES.labels(namespace, "degraded" if outcome.problems else "ok").inc()
    metrics.WRITES.labels(namespace).inc(outcome.writes)
    metrics.DEGRADED.labels(namespace, name).set(1 if outcome.problems else 0)
    for event in outcome.events:
        # A kind the API server does not map yet is retried every 2 s for up to half a minute: one
        # Warning says so, not one per pass.
        if not (retry and KIND_NOT_YET_KNOWN in event.message):
            kopf.event(body, type=event.type, reason=event.reason, message=event.message)
    if outcome.retry:
        raise kopf.TemporaryError(outcome.problems[-1].message, delay=retry_after(retry, outcome.problems))
    return outcome


def forget_object(namespace: str, name: str, scaler: Scaler, inflight: InFlight) -> None:
    """A deleted PixtralDeployment leaves nothing behind in the operator: autoscaler memory and
    gauges, its lock, and its Degraded gauge (whose alert would otherwise fire forever)."""
    scaler.forget(namespace, name)
    inflight.forget((namespace, name))
    with contextlib.suppress(KeyError):
        metrics.DEGRADED.remove(namespace, name)


def _plain(body: Any) -> dict[str, Any]:
    """kopf's Body is a read-only view; reconcile() wants plain dicts."""
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": dict(body["metadata"]),
        "spec": dict(body.get("spec") or {}),
        "status": dict(body.get("status") or {}),
    }


# Degraded reasons that only a Secret or claim appearing can heal: neither kind is watched (the operator
# may never list or watch Secrets), so such an object is re-checked every RECHECK_SECONDS; so is one
# whose status is behind its spec (behind_its_spec). The check reads kopf's copy of the object: no request.
UNWATCHED_REFERENCE_REASONS = frozenset({"SecretNotFound", "PersistentVolumeClaimNotFound"})
RECHECK_SECONDS = 10.0


def waits_for_a_reference(status: Mapping[str, Any]) -> bool:
    return any(
        c.get("type") == "Degraded" and c.get("status") == "True" and c.get("reason") in UNWATCHED_REFERENCE_REASONS
        for c in (status.get("conditions") or ())
    )


def behind_its_spec(body: Mapping[str, Any]) -> bool:
    """No status written for the object's current generation. Normally a matter of seconds, while
    the change handler runs; it stays so when the change was lost: two peered replicas starting at
    once both work until one pauses (kopf's peering), and a create the pausing one took is then not
    handled until the resync. Measured at 200 objects: 3 objects waited the full 300 s."""
    status = body.get("status") or {}
    return status.get("observedGeneration") != (body.get("metadata") or {}).get("generation")


def _needs_recheck(body: kopf.Body, status: kopf.Status, **_: Any) -> bool:
    return waits_for_a_reference(status) or behind_its_spec(body)


def _autoscaling_enabled(spec: kopf.Spec, **_: Any) -> bool:
    return bool((spec.get("autoscaling") or {}).get("enabled"))


def _canary_analysis(spec: kopf.Spec, **_: Any) -> bool:
    return (spec.get("canary") or {}).get("analysis") is not None


def register(
    registry: kopf.OperatorRegistry, settings: OperatorSettings, kube: Kube, scaler: Scaler,
    cache: ObjectCache | None = None,
) -> frozenset[str]:
    """`cache`: the watch-fed cache `kube` reads from (cache.CachedKube); with it, a change of a child
    reconciles its owner at once. Without it only the change handlers and the resync reconcile.
    Returns the ids of the routine handlers (timers, watch events), whose successes are not logged."""
    resource = dict(group=GROUP, version=VERSION, plural=PLURAL, registry=registry)
    inflight = InFlight()

    async def reconcile_from_cache(key: tuple[str, str]) -> bool | None:
        body = cache.get(KIND, *key) if cache is not None else None
        if body is None or body["metadata"].get("deletionTimestamp"):
            return False  # gone, or going: the delete handler and the garbage collector take over
        # Not waiting for a running reconcile's lock in the thread: Requeue waits on the loop instead.
        outcome = await asyncio.to_thread(run_reconcile, body, kube, settings, inflight, wait=False)
        return None if outcome is None else True

    routine: set[str] = set()

    def timer(handler_id: str, **options: Any) -> Any:
        """kopf.timer for this resource; a timer is routine (one pass per object per interval)."""
        routine.add(handler_id)
        return kopf.timer(**resource, id=handler_id, **options)

    if cache is not None:
        routine |= register_watches(registry, cache, Requeue(reconcile_from_cache))

    def after(body: kopf.Body) -> None:
        # Autoscaling off: the autoscaler's memory and gauges go (the reconcile cleared its status keys).
        if not _autoscaling_enabled(body.get("spec") or {}):
            scaler.forget(body["metadata"]["namespace"], body["metadata"]["name"])

    @kopf.on.create(**resource, id="reconcile")
    @kopf.on.update(**resource, id="reconcile")
    @kopf.on.resume(**resource, id="reconcile")
    def on_change(body: kopf.Body, retry: int, **_: Any) -> None:
        run_reconcile(body, kube, settings, inflight, retry=retry)
        after(body)

    # A change of a child (a pod becomes ready, a hand edit) or of a node's GPUs reconciles the owner
    # through the watches (handlers/watch.py); a missing Secret or claim is re-checked below. This
    # slow pass (PIXTRAL_RESYNC_SECONDS) is the safety net; it writes nothing when nothing changed.
    @timer("resync", interval=settings.resync_seconds, initial_delay=settings.resync_seconds)
    def resync(body: kopf.Body, retry: int, **_: Any) -> None:
        run_reconcile(body, kube, settings, inflight, retry=retry, wait=False)
        after(body)

    @timer("recheck", interval=RECHECK_SECONDS, initial_delay=RECHECK_SECONDS, when=_needs_recheck)
    def recheck(body: kopf.Body, retry: int, **_: Any) -> None:
        run_reconcile(body, kube, settings, inflight, retry=retry, wait=False)

    # A tick that raised is tried again at the next interval, not after kopf's default 60 s backoff:
    # a minute without ticks is a minute in which load goes unanswered.
    @timer("autoscale", interval=settings.autoscale_seconds, backoff=settings.autoscale_seconds,
           when=_autoscaling_enabled)
    async def autoscale(body: kopf.Body, **_: Any) -> None:
        started = _clock()
        try:
            await _autoscale(body)
        finally:
            elapsed = _clock() - started
            metrics.AUTOSCALE_TICK_SECONDS.observe(elapsed)
            if elapsed > SLOW_TICK_FACTOR * settings.autoscale_seconds:
                log.warning(
                    "%s/%s: autoscaler tick took %.1fs (PIXTRAL_AUTOSCALE_SECONDS %gs): the operator is starved, "
                    "or the API server or Prometheus answers slowly",
                    body["metadata"]["namespace"], body["metadata"]["name"], elapsed, settings.autoscale_seconds,
                )

    async def _autoscale(body: kopf.Body) -> None:
        meta = body["metadata"]
        # The cached body holds the status this operator wrote last, which kopf's may not have yet:
        # comparing with it keeps the tick from writing the same status twice.
        cached = cache.get(KIND, meta["namespace"], meta["name"]) if cache is not None else None
        result = await scaler.tick(cached if cached is not None else _plain(body))
        for track, decision in result.decisions.items():
            if decision.event is not None:
                kopf.event(body, type=decision.event.type, reason=decision.event.reason, message=f"{track}: {decision.event.message}")
        if result.status_patch is not None:
            await asyncio.to_thread(kube.patch_status, meta["namespace"], meta["name"], result.status_patch)

    canary_loop = CanaryLoop(kube, scaler.prometheus, settings)

    @timer("canary", interval=settings.canary_seconds, backoff=settings.canary_seconds, when=_canary_analysis)
    async def canary(body: kopf.Body, retry: int, **_: Any) -> None:
        import asyncio

        plain = _plain(body)
        result = await canary_loop.tick(plain)
        for event in result.events:
            kopf.event(body, type=event.type, reason=event.reason, message=event.message)
        if result.status_patch is None:
            return
        meta = plain["metadata"]
        await asyncio.to_thread(kube.patch_status, meta["namespace"], meta["name"], result.status_patch)
        if result.rerender:
            # Apply the new weight (router ConfigMap), pods or promotion now, not at the next resync.
            plain["status"] = {**plain["status"], **result.status_patch}
            await asyncio.to_thread(run_reconcile, plain, kube, settings, inflight, retry=retry)

    @kopf.on.field(**resource, id="manual-scale", field="spec.replicas")
    def manual_scale(body: kopf.Body, old: Any, new: Any, **_: Any) -> None:
        if old is not None and _autoscaling_enabled(body.get("spec") or {}):
            kopf.event(
                body,
                type="Warning",
                reason="ManualScaleIgnored",
                message=f"spec.replicas changed {old} -> {new} but autoscaling is enabled: the autoscaler owns the "
                "replica count (set minReplicas/maxReplicas, or disable autoscaling)",
            )

    @kopf.on.delete(**resource, id="forget", optional=True)
    def forget(body: kopf.Body, **_: Any) -> None:
        forget_object(body["metadata"]["namespace"], body["metadata"]["name"], scaler, inflight)

    return frozenset(routine)
