"""kopf registration for PixtralDeployment: thin wrappers around reconcile() and the autoscaler."""

from __future__ import annotations

import logging
import time
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException
from pixtral_operator import metrics
from pixtral_operator.k8s import KubeApi
from pixtral_operator.reconcile import reconcile
from pixtral_operator.scaler import Scaler
from pixtral_operator.settings import OperatorSettings
from pixtral_operator.spec import GROUP, PLURAL, VERSION

log = logging.getLogger(__name__)


def run_reconcile(body: Any, kube: KubeApi, settings: OperatorSettings) -> None:
    plain = _plain(body)
    namespace = plain["metadata"]["namespace"]
    started = time.monotonic()
    try:
        outcome = reconcile(plain, kube, settings)
    except ApiException as exc:
        metrics.RECONCILES.labels(namespace, "error").inc()
        if exc.status == 409:
            raise kopf.TemporaryError(f"conflict while applying children: {exc.reason}", delay=2) from exc
        raise kopf.TemporaryError(f"Kubernetes API error {exc.status}: {exc.reason}", delay=10) from exc
    finally:
        metrics.RECONCILE_SECONDS.observe(time.monotonic() - started)
    metrics.RECONCILES.labels(namespace, "degraded" if outcome.problems else "ok").inc()
    metrics.WRITES.labels(namespace).inc(outcome.writes)
    metrics.DEGRADED.labels(namespace, plain["metadata"]["name"]).set(1 if outcome.problems else 0)
    for event in outcome.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)


def _plain(body: Any) -> dict[str, Any]:
    """kopf's Body is a read-only view; reconcile() wants plain dicts."""
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": dict(body["metadata"]),
        "spec": dict(body.get("spec") or {}),
        "status": dict(body.get("status") or {}),
    }


def _autoscaling_enabled(spec: kopf.Spec, **_: Any) -> bool:
    return bool((spec.get("autoscaling") or {}).get("enabled"))


def register(registry: kopf.OperatorRegistry, settings: OperatorSettings, kube: KubeApi, scaler: Scaler) -> None:
    resource = dict(group=GROUP, version=VERSION, plural=PLURAL, registry=registry)

    @kopf.on.create(**resource, id="reconcile")
    @kopf.on.update(**resource, id="reconcile")
    @kopf.on.resume(**resource, id="reconcile")
    def on_change(body: kopf.Body, **_: Any) -> None:
        run_reconcile(body, kube, settings)

    # Children change on their own (pods become ready, nodes appear, a Secret gets created):
    # a periodic pass refreshes the status and re-judges the spec. It writes nothing when nothing changed.
    @kopf.timer(**resource, id="resync", interval=settings.resync_seconds, initial_delay=settings.resync_seconds)
    def resync(body: kopf.Body, **_: Any) -> None:
        run_reconcile(body, kube, settings)

    @kopf.timer(**resource, id="autoscale", interval=settings.autoscale_seconds, when=_autoscaling_enabled)
    async def autoscale(body: kopf.Body, **_: Any) -> None:
        import asyncio

        result = await scaler.tick(_plain(body))
        meta = body["metadata"]
        for track, decision in result.decisions.items():
            if decision.event is not None:
                kopf.event(body, type=decision.event.type, reason=decision.event.reason, message=f"{track}: {decision.event.message}")
        if result.status_patch is not None:
            await asyncio.to_thread(kube.patch_status, meta["namespace"], meta["name"], result.status_patch)

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
        scaler.forget(body["metadata"]["namespace"], body["metadata"]["name"])
