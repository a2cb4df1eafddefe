"""The autoscaler's timer body: read each track's signal, decide, patch the Deployment, report.

The decision itself is pure (`scale_decision.decide`); this module only moves data between Prometheus,
the Deployment, the stored state and the status. Per-track state lives in memory between ticks and
is persisted in `status.autoscaler.<track>.state` whenever the visible decision changes, so a
restarted operator resumes with its windows (a long gap restarts them, which only delays scale-down).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Mapping
from typing import Any

from pixtral_operator import metrics
from pixtral_operator.canary_state import effective_spec
from pixtral_operator.jsontree import merge_patch
from pixtral_operator.k8s import Kube
from pixtral_operator.prometheus import FleetReader, PrometheusClient, read_fleet_signal
from pixtral_operator.render import labels as L
from pixtral_operator.scale_decision import Decision, Policy, Signal, StateError, TrackState, decide
from pixtral_operator.spec import TRACKS, parse

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TickResult:
    decisions: dict[str, Decision]
    status_patch: dict[str, Any] | None


class Scaler:
    def __init__(self, kube: Kube, prometheus: PrometheusClient | None, fleet_seconds: float = 1.0) -> None:
        """`fleet_seconds`: how long one read of every object's signal (four queries) serves the
        ticks of all objects (prometheus.FleetReader); the operator passes its tick interval."""
        self.kube = kube
        self.prometheus = prometheus
        self.fleet = FleetReader(prometheus, fleet_seconds) if prometheus is not None else None
        self._states: dict[tuple[str, str, str], TrackState] = {}

    def forget(self, namespace: str, name: str) -> None:
        for key in [k for k in self._states if k[:2] == (namespace, name)]:
            del self._states[key]
        for track in TRACKS:
            for state in ("desired", "ready"):
                with contextlib.suppress(KeyError):
                    metrics.TRACK_REPLICAS.remove(namespace, name, track, state)

    async def tick(self, body: Mapping[str, Any], now: float | None = None) -> TickResult:
        now = time.time() if now is None else now
        meta = body["metadata"]
        name, namespace = meta["name"], meta["namespace"]
        # Canary analysis: the canary's bounds follow its phase (0 once rolled back or promoted).
        spec = effective_spec(parse(name, namespace, body.get("spec") or {}), body.get("status"))
        old = dict((body.get("status") or {}).get("autoscaler") or {})
        entries: dict[str, Any] = {}
        decisions: dict[str, Decision] = {}
        total_load = 0.0
        for track in spec.tracks():
            policy = Policy.for_track(spec, track.track)
            dep_name = L.track_deployment_name(name, track.track)
            # Only a Deployment this PixtralDeployment controls (from the watch cache): a namesake
            # it does not control is never scaled, and one the reconcile has not created yet costs
            # no API read (most of the 3,085 Deployment GETs of a 200-object create were such
            # ticks, each a 404).
            dep = await asyncio.to_thread(self.kube.get_owned, "apps/v1", "Deployment", namespace, dep_name)
            if dep is None:
                continue  # the reconcile has not created it yet
            current = int((dep.get("spec") or {}).get("replicas") or 0)
            ready = int((dep.get("status") or {}).get("readyReplicas") or 0)
            state = self._state(namespace, name, track.track, old.get(track.track), current)
            if self.fleet is None:
                signal = Signal.missing("the operator has no Prometheus URL (PIXTRAL_PROMETHEUS_URL)")
            else:
                signal = await read_fleet_signal(
                    self.fleet, now, namespace, name, track.track, ready, spec.autoscaling.prometheus_query
                )
            decision = decide(state, signal, policy, now)
            self._states[(namespace, name, track.track)] = decision.state
            decisions[track.track] = decision
            metrics.TRACK_REPLICAS.labels(namespace, name, track.track, "desired").set(decision.desired)
            metrics.TRACK_REPLICAS.labels(namespace, name, track.track, "ready").set(ready)
            if decision.changed:
                await asyncio.to_thread(self.kube.scale_deployment, namespace, dep_name, decision.desired)
                direction = "up" if decision.desired > decision.previous else "down"
                metrics.SCALE_EVENTS.labels(namespace, name, track.track, direction).inc()
                log.info(
                    "%s/%s %s: %d -> %d (%s: %s)",
                    namespace, name, track.track, decision.previous, decision.desired, decision.reason, decision.message,
                )
            total_load += decision.load or 0.0
            entries[track.track] = decision.status()

        visible_old = {t: {k: v for k, v in (e or {}).items() if k != "state"} for t, e in old.items()}
        # As the API stores them: a null (no lastScaleTime yet) is not read back.
        if visible_old == merge_patch({}, entries) and (body.get("status") or {}).get("queue") == total_load:
            return TickResult(decisions, None)
        for track_name, entry in entries.items():
            entry["state"] = self._states[(namespace, name, track_name)].to_dict()
        return TickResult(decisions, {"autoscaler": entries, "queue": total_load})

    def _state(self, namespace: str, name: str, track: str, stored: Any, current: int) -> TrackState:
        state = self._states.get((namespace, name, track))
        if state is None and isinstance(stored, Mapping) and stored.get("state"):
            try:
                state = TrackState.from_dict(dict(stored["state"]))
            except StateError as error:
                log.warning("%s/%s %s: ignoring stored autoscaler state: %s", namespace, name, track, error)
        if state is None:
            state = TrackState(replicas=current)
        # The Deployment is the truth about what runs (someone may have changed it).
        return dataclasses.replace(state, replicas=current)
