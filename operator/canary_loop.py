"""The canary analysis' timer body: read the window, decide, store the state, say what happened.

The decision is canary_analysis.decide (pure); what the stored state means for the children is
canary_state.effective_spec (pure). This module moves data between Prometheus, the canary and stable
Deployments, the manual-control annotation and `status.canary`, and returns the Events and the status
patch. When the state changes what is rendered (weight, retirement, promotion), the caller runs a
reconcile at once, which applies the router's ConfigMap (the router reloads it without a restart)
and scales the Deployments.

Phases: Pending (no ready canary pod yet, weight 0) -> Progressing through the weight steps (Paused
by hand) -> Promoting (the stable track rolls to the canary's settings while the canary keeps its
share) -> Promoted; or RolledBack (weight 0 at once). Failed: no Prometheus to read. A rolled back
or promoted canary gets weight 0 first and its pods go RETIRE_AFTER_SECONDS later, once the routers
have reloaded and the requests already on it have finished.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Mapping
from typing import Any

from pixtral_operator import canary_analysis as A
from pixtral_operator import canary_state as CS
from pixtral_operator.events import Event
from pixtral_operator.k8s import Kube, owner_of
from pixtral_operator.prometheus import PrometheusClient, QueryResult
from pixtral_operator.reconcile import _deployment_state
from pixtral_operator.render import desired_children
from pixtral_operator.render import labels as L
from pixtral_operator.settings import OperatorSettings
from pixtral_operator.spec import PixtralSpec, parse
from pixtral_operator.validation import spec_problems

log = logging.getLogger(__name__)

# From weight 0 to no canary pods: the routers' ConfigMap watch delivers the new weight within
# seconds, and the requests already on the canary finish on it.
RETIRE_AFTER_SECONDS = 10.0


@dataclasses.dataclass
class CanaryTick:
    events: list[Event]
    status_patch: dict[str, Any] | None  # {"canary": ...} when status.canary changed
    rerender: bool  # the effective spec changed: reconcile now


def track_window(results: Mapping[str, QueryResult]) -> A.TrackWindow | None:
    """A track's window from its three queries. No answer about the requests means no window (the
    analysis holds); an empty answer is zero requests. A histogram quantile over no requests is NaN,
    which the client reports as a failure: no latency."""
    requests, errors, latency = results["requests"], results["errors"], results["latency"]
    if not requests.ok or not errors.ok:
        return None
    return A.TrackWindow(requests=requests.value or 0.0, errors=errors.value or 0.0, latency=latency.value)


def _window_dict(window: A.TrackWindow | None) -> dict[str, Any] | None:
    if window is None:
        return None
    out: dict[str, Any] = {"requests": round(window.requests, 1), "errors": round(window.errors, 1)}
    if window.error_rate is not None:
        out["errorRate"] = round(window.error_rate, 4)
    if window.latency is not None:
        out["latencySeconds"] = round(window.latency, 4)
    return out


def _effect(spec: PixtralSpec, stored: Mapping[str, Any]) -> tuple[Any, ...]:
    """What the children are rendered from; a change needs a reconcile."""
    return (CS.router_weight(spec, stored), CS.promoted(stored), CS.retired(stored))


class CanaryLoop:
    def __init__(self, kube: Kube, prometheus: PrometheusClient | None, settings: OperatorSettings) -> None:
        self.kube = kube
        self.prometheus = prometheus
        self.settings = settings

    async def read_window(self, spec: PixtralSpec, policy: A.Policy) -> A.Window:
        assert self.prometheus is not None
        tracks = {}
        for track in ("canary", "stable"):
            queries = A.window_queries(spec.namespace, spec.name, track, policy.interval_seconds,
                                       policy.latency_quantile, policy.latency_metric)
            names = list(queries)
            answers = await asyncio.gather(*(self.prometheus.query(queries[n]) for n in names))
            tracks[track] = track_window(dict(zip(names, answers, strict=True)))
        return A.Window(canary=tracks["canary"], stable=tracks["stable"])

    async def tick(self, body: Mapping[str, Any], now: float | None = None) -> CanaryTick:
        now = time.time() if now is None else now
        meta = body["metadata"]
        name, namespace = meta["name"], meta["namespace"]
        raw_spec = body.get("spec") or {}
        spec = parse(name, namespace, raw_spec)
        if not CS.analysed(spec) or spec_problems(name, raw_spec):
            return CanaryTick([], None, False)  # no analysis, or the reconcile reports what is wrong
        assert spec.canary is not None and spec.canary.analysis is not None
        policy = spec.canary.analysis
        status = body.get("status") or {}
        old = dict(status.get("canary") or {})
        action = (meta.get("annotations") or {}).get(CS.ACTION_ANNOTATION)
        events: list[Event] = []

        stored = dict(CS.stored_state(spec, status))
        digest = CS.canary_hash(spec)
        if stored.get("specHash") != digest:
            # A new canary: an annotation left from an earlier analysis does not act on it.
            stored = {"phase": A.PENDING, "specHash": digest, "step": 0, "failedChecks": 0, "paused": False,
                      "handledAction": action if old.get("specHash") else None}
            events.append(Event("Normal", "CanaryPending",
                                f"canary analysis started (steps {list(policy.steps)}, every {policy.interval_seconds:g}s): "
                                "weight 0 until a canary pod is ready"))
        if action != stored.get("handledAction"):
            stored, event = CS.manual_action(stored, action, now)
            events += [event] if event else []

        canary_dep = await asyncio.to_thread(self.kube.get_owned, "apps/v1", "Deployment", namespace,
                                             L.track_deployment_name(name, "canary"))
        canary_state = _deployment_state(canary_dep)
        phase = stored["phase"]
        if self.prometheus is None and phase in (A.PENDING, A.PROGRESSING, A.PAUSED):
            stored.update(phase=A.FAILED, message="the operator has no Prometheus URL (PIXTRAL_PROMETHEUS_URL): "
                                                  "the canary cannot be analysed; weight 0")
            events.append(Event("Warning", "CanaryAnalysisFailed", stored["message"]))
        elif phase == A.FAILED and self.prometheus is not None:
            stored.update(phase=A.PENDING, message="")
        elif phase == A.PENDING and canary_state["ready"] >= 1 and not stored.get("paused"):
            stored.update(A.StepState.start(now).to_dict())
            stored["message"] = f"canary ready: weight 0 -> {policy.steps[0]}"
            events.append(Event("Normal", "CanaryProgressing", stored["message"]))
        elif phase in (A.PROGRESSING, A.PAUSED):
            state = A.StepState.from_dict(stored)
            due = not state.paused and now >= state.step_started_at + policy.interval_seconds
            window = await self.read_window(spec, policy) if due else A.Window(None, None)
            verdict = A.decide(policy, state, window, now)
            stored.update(verdict.state.to_dict())
            if due:
                stored["lastCheck"] = {
                    "time": round(now, 3), "reason": verdict.reason, "message": verdict.message,
                    "canary": _window_dict(window.canary), "stable": _window_dict(window.stable),
                    "maxErrorRate": policy.max_error_rate, "maxLatencyRatio": policy.max_latency_ratio,
                }
                stored["message"] = verdict.message
            events += self._verdict_events(verdict, due, now, stored)
        elif phase == A.PROMOTING:
            if await self._stable_runs_canary(body, spec, stored):
                stored.update(phase=A.PROMOTED, finishedAt=now,
                              message="the stable track runs the canary's settings and is ready: canary weight -> 0")
                events.append(Event("Normal", "CanaryPromoted", stored["message"]))
        elif phase in (A.ROLLED_BACK, A.PROMOTED) and not stored.get("retired"):
            if now >= float(stored.get("finishedAt") or 0) + RETIRE_AFTER_SECONDS:
                stored["retired"] = True
                events.append(Event("Normal", "CanaryRetired", f"canary {phase}: scaling its Deployment to 0"))

        stored["weight"] = CS.router_weight(spec, stored)
        stored["replicas"] = canary_state["replicas"]
        stored["readyReplicas"] = canary_state["ready"]
        for event in events:
            log.info("%s/%s canary: %s: %s", namespace, name, event.reason, event.message)
        if stored == old:
            return CanaryTick(events, None, False)
        previous = CS.stored_state(spec, status)
        # The children follow the effect; the conditions (CanaryHealthy) follow the phase and the check.
        rerender = _effect(spec, stored) != _effect(spec, previous) or stored["phase"] != previous.get("phase") or (
            (stored.get("lastCheck") or {}).get("reason") != (previous.get("lastCheck") or {}).get("reason"))
        # A merge patch keeps keys it does not name: those of an earlier analysis go explicitly.
        patch = {**stored, **{k: None for k in old if k not in stored}}
        return CanaryTick(events, {"canary": patch}, rerender)

    def _verdict_events(self, verdict: A.Verdict, due: bool, now: float, stored: dict[str, Any]) -> list[Event]:
        if verdict.action == A.ADVANCE:
            return [Event("Normal", "CanaryStepAdvanced", verdict.message)]
        if verdict.action == A.PROMOTE:
            return [Event("Normal", "CanaryPromoting", verdict.message)]
        if verdict.action == A.ROLLBACK:
            stored.update(reason=A.CHECK_FAILED, finishedAt=now)
            return [Event("Warning", "CanaryRolledBack", verdict.message)]
        if due and verdict.reason == A.CHECK_FAILED:
            return [Event("Warning", "CanaryCheckFailed", verdict.message)]
        return []

    async def _stable_runs_canary(self, body: Mapping[str, Any], spec: PixtralSpec, stored: Mapping[str, Any]) -> bool:
        """The stable Deployment holds the promoted template (its hash) and has fully rolled out."""
        effective = CS.effective_spec(spec, {"canary": stored})
        name = L.track_deployment_name(spec.name, "stable")
        replicas = {t.track: t.replicas for t in effective.tracks()}
        want = next(c for c in desired_children(effective, self.settings, owner_of(body), replicas)
                    if c["kind"] == "Deployment" and c["metadata"]["name"] == name)
        live = await asyncio.to_thread(self.kube.get_owned, "apps/v1", "Deployment", spec.namespace, name)
        if live is None:
            return False
        have = ((live.get("metadata") or {}).get("annotations") or {}).get(L.SPEC_HASH_ANNOTATION)
        return have == want["metadata"]["annotations"][L.SPEC_HASH_ANNOTATION] and _deployment_state(live)["rolled_out"]
