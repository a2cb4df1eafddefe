"""The one idempotent reconcile: spec -> checks -> children -> status.

Create, update, resume and the periodic resync all call `reconcile()`. It writes only what differs
(`children.sync`: a child whose hash matches and whose live object still holds every rendered field is
left alone, a hand edit of such a field is applied back), and the status is patched only when it
changed, so a reconcile of an unchanged object performs no write at all."""

from __future__ import annotations

import dataclasses
import datetime
import logging
from collections.abc import Mapping
from typing import Any

from pixtral_operator import canary_state as CS
from pixtral_operator import children as CH
from pixtral_operator import conditions as C
from pixtral_operator.capacity import gpu_verdict
from pixtral_operator.drift import controlled_by
from pixtral_operator.events import Event
from pixtral_operator.k8s import Kube, owner_of
from pixtral_operator.render import desired_children, obsolete_children
from pixtral_operator.render import labels as L
from pixtral_operator.render.router import endpoint_url
from pixtral_operator.settings import OperatorSettings
from pixtral_operator.spec import TRACKS, PixtralSpec, SpecProblem, TrackSpec, parse
from pixtral_operator.validation import spec_problems

log = logging.getLogger(__name__)

# Status keys the reconcile owns; `autoscaler` and `queue` belong to the autoscaler loop.
OWNED_STATUS_KEYS = (
    "observedGeneration",
    "conditions",
    "replicas",
    "readyReplicas",
    "replicasSummary",
    "selector",
    "endpoint",
    "canary",
)
# The autoscaler loop's status keys: removed by the reconcile while autoscaling is off.
AUTOSCALER_STATUS_KEYS = ("autoscaler", "queue")


@dataclasses.dataclass
class Outcome:
    status: dict[str, Any]
    events: list[Event]
    problems: list[SpecProblem | CH.ChildProblem]
    writes: int = 0
    # An apply was refused: the status says so; the caller retries later (children.retry_delay).
    retry: bool = False


def utcnow() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_spec(spec: PixtralSpec, kube: Kube) -> list[SpecProblem]:
    """What the API server cannot judge: referenced objects (GPU capacity: operator/capacity.py)."""
    problems: list[SpecProblem] = []
    secret_refs = []
    if spec.router.api_keys_secret:
        secret_refs.append(("spec.router.apiKeysSecretRef.name", spec.router.api_keys_secret))
    for track in spec.tracks():
        if track.source.hub_token_secret:
            prefix = "spec.model" if track.track == "stable" else "spec.canary.model"
            secret_refs.append((f"{prefix}.source.hub.tokenSecretRef.name", track.source.hub_token_secret))
    for field, name in dict.fromkeys(secret_refs):
        if kube.get("v1", "Secret", spec.namespace, name) is None:
            problems.append(
                SpecProblem(field, "SecretNotFound", f"{field}: Secret {spec.namespace}/{name} does not exist")
            )
    for track in spec.tracks():
        claim = track.source.pvc_claim
        if claim and kube.get("v1", "PersistentVolumeClaim", spec.namespace, claim) is None:
            prefix = "spec.model" if track.track == "stable" else "spec.canary.model"
            problems.append(
                SpecProblem(
                    f"{prefix}.source.pvc.claimName",
                    "PersistentVolumeClaimNotFound",
                    f"{prefix}.source.pvc.claimName: PersistentVolumeClaim {spec.namespace}/{claim} does not exist",
                )
            )
    return problems


def _initial_replicas(spec: PixtralSpec, track: TrackSpec) -> int:
    """The count a track's Deployment is rendered with. While autoscaling is on this is only the count
    it is created with: afterwards the autoscaler owns the field and the reconcile never applies it."""
    if not spec.autoscaling.enabled:
        return track.replicas
    low, high = spec.autoscaling_bounds(track.track)
    return max(low, min(high, track.replicas))


def _deployment_state(dep: Mapping[str, Any] | None) -> dict[str, Any]:
    if dep is None:
        return {"exists": False, "desired": 0, "replicas": 0, "ready": 0, "updated": 0, "rolled_out": False}
    spec = dep.get("spec") or {}
    st = dep.get("status") or {}
    desired = int(spec.get("replicas", 1))
    ready = int(st.get("readyReplicas") or 0)
    updated = int(st.get("updatedReplicas") or 0)
    replicas = int(st.get("replicas") or 0)
    observed = int(st.get("observedGeneration") or 0)
    generation = int((dep.get("metadata") or {}).get("generation") or 0)
    rolled_out = observed >= generation and updated >= desired and ready >= desired and replicas <= desired
    return {
        "exists": True,
        "desired": desired,
        "replicas": replicas,
        "ready": ready,
        "updated": updated,
        "rolled_out": rolled_out,
    }


def build_status(
    spec: PixtralSpec,
    settings: OperatorSettings,
    generation: int,
    old_status: Mapping[str, Any],
    deployments: Mapping[str, Mapping[str, Any] | None],
    problems: list[SpecProblem] | list[CH.ChildProblem],
    now: str,
    advisories: list[SpecProblem] | None = None,
) -> dict[str, Any]:
    """Pure: the owned part of the status from the children's state. `problems` refused the spec;
    `advisories` were reported while the children were applied anyway."""
    stable = _deployment_state(deployments.get("stable"))
    router = _deployment_state(deployments.get("router"))
    canary = _deployment_state(deployments.get("canary")) if spec.canary_track else None

    conds: list[C.Condition] = []
    if problems:
        conds.append(C.Condition(C.DEGRADED, True, problems[0].reason, "; ".join(p.message for p in problems)))
    elif advisories:
        conds.append(C.Condition(C.DEGRADED, True, advisories[0].reason, "; ".join(p.message for p in advisories)))
    else:
        conds.append(C.Condition(C.DEGRADED, False, "AsExpected", "the spec is valid for this cluster"))

    rolling = [n for n, s in (("stable", stable), ("router", router), ("canary", canary)) if s and not s["rolled_out"]]
    if problems and problems[0].reason in (CH.CHILD_CONFLICT, CH.APPLY_FAILED):
        conds.append(C.Condition(C.PROGRESSING, False, problems[0].reason, "the children are not all applied; see Degraded"))
    elif problems:
        conds.append(C.Condition(C.PROGRESSING, False, "SpecRejected", "the last spec change was not applied; see Degraded"))
    elif rolling:
        detail = ", ".join(
            f"{n}: {s['ready']}/{s['desired']} ready"
            for n, s in (("stable", stable), ("router", router), ("canary", canary))
            if s and n in rolling
        )
        conds.append(C.Condition(C.PROGRESSING, True, "RollingOut", detail))
    else:
        conds.append(C.Condition(C.PROGRESSING, False, "RolloutComplete", "all pods run the current spec"))

    serving_pods = stable["ready"] + (canary["ready"] if canary else 0)
    if router["ready"] < 1:
        conds.append(C.Condition(C.READY, False, "RouterNotReady", f"router: {router['ready']}/{router['desired']} pods ready"))
    elif serving_pods >= 1:
        conds.append(
            C.Condition(C.READY, True, "Serving", f"runtime: {stable['ready']}/{stable['desired']} stable pods ready")
        )
    elif spec.autoscaling.enabled and spec.autoscaling.min_replicas == 0 and stable["desired"] == 0:
        conds.append(
            C.Condition(C.READY, True, "ScaledToZero", "no runtime pod runs; the router holds requests while one starts")
        )
    else:
        conds.append(
            C.Condition(C.READY, False, "RuntimeNotReady", f"runtime: 0/{stable['desired']} stable pods ready")
        )
    if canary is not None:
        if canary["ready"] >= 1:
            conds.append(C.Condition(C.CANARY_READY, True, "Serving", f"canary: {canary['ready']}/{canary['desired']} pods ready"))
        else:
            conds.append(C.Condition(C.CANARY_READY, False, "NotReady", f"canary: 0/{canary['desired']} pods ready"))
    healthy = CS.healthy_condition(spec, old_status)
    if healthy is not None:
        conds.append(healthy)

    status: dict[str, Any] = {
        "observedGeneration": generation,
        "conditions": C.merge(old_status.get("conditions"), conds, generation=generation, now=now),
        "replicas": stable["replicas"],
        "readyReplicas": stable["ready"],
        "replicasSummary": f"{stable['ready']}/{stable['desired']}",
        "selector": L.selector_string(L.runtime_selector(spec.name, "stable")),
        "endpoint": endpoint_url(spec, settings),
    }
    if CS.analysed(spec):
        pass  # status.canary belongs to the analysis loop (canary_loop.py)
    elif canary is not None and spec.canary is not None:
        status["canary"] = {
            "weight": spec.canary.weight,
            "replicas": canary["replicas"],
            "readyReplicas": canary["ready"],
            "phase": "Serving" if canary["ready"] >= 1 and spec.canary.weight > 0 else "Progressing",
        }
    else:
        status["canary"] = {"weight": 0, "replicas": 0, "readyReplicas": 0, "phase": "None"}
    return status


def reconcile(body: Mapping[str, Any], kube: Kube, settings: OperatorSettings, now: str | None = None) -> Outcome:
    now = now or utcnow()
    meta = body["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    generation = int(meta.get("generation") or 0)
    old_status = body.get("status") or {}
    # With canary analysis, the weight, the canary's pods and a promotion come from status.canary.
    spec = CS.effective_spec(parse(name, namespace, body.get("spec") or {}), old_status)
    events: list[Event] = []
    writes = 0

    capacity = gpu_verdict(spec, kube.list_nodes(), strict=settings.strict_gpu_check)
    problems = spec_problems(name, body.get("spec") or {}) + capacity.blocking + check_spec(spec, kube)
    deployment_names = {track: L.track_deployment_name(name, track) for track in TRACKS}
    deployment_names["router"] = L.router_name(name)
    # A track that is not rendered matters only if this PixtralDeployment still has its Deployment.
    rendered = {"stable", "router"} | ({"canary"} if spec.canary_track else set())
    live_deps: dict[str, dict[str, Any] | None] = {
        part: (kube.get if part in rendered else kube.get_owned)("apps/v1", "Deployment", namespace, dep_name)
        for part, dep_name in deployment_names.items()
    }
    retry = False

    if problems:
        # Leave whatever runs untouched: a bad change must not take a serving deployment down.
        for p in problems:
            log.warning("%s/%s: %s", namespace, name, p.message)
    else:
        replicas = {t.track: _initial_replicas(spec, t) for t in spec.tracks()}
        children = desired_children(spec, settings, owner_of(body), replicas)
        by_name = {dep_name: part for part, dep_name in deployment_names.items()}
        live = {
            (c["kind"], c["metadata"]["name"]): live_deps[by_name[c["metadata"]["name"]]]
            if c["kind"] == "Deployment"
            else kube.get(c["apiVersion"], c["kind"], namespace, c["metadata"]["name"])
            for c in children
        }
        autoscaled = {L.track_deployment_name(name, t.track) for t in spec.tracks()} if spec.autoscaling.enabled else set()
        synced = CH.sync(children, kube, meta["uid"], autoscaled, live,
                         first=lambda: CH.ensure_internal_key(name, namespace, kube, owner_of(body)))
        writes += synced.writes
        events += synced.events
        problems = synced.problems
        retry = synced.failed
        for (kind, child_name), obj in synced.live.items():
            if kind == "Deployment":
                live_deps[by_name[child_name]] = obj
        for p in problems:
            log.warning("%s/%s: %s", namespace, name, p.message)
        for api_version, kind, child_name in obsolete_children(spec) if not problems else ():
            obj = kube.get_owned(api_version, kind, namespace, child_name)
            # Only what this PixtralDeployment controls: a namesake of someone else's stays.
            if obj is not None and controlled_by(obj, meta["uid"]):
                kube.delete(api_version, kind, namespace, child_name)
                writes += 1
                events.append(Event("Normal", "Deleted", f"Deleted {kind} {child_name} (no canary in the spec)"))
                if kind == "Deployment":
                    live_deps["canary"] = None

    status = build_status(spec, settings, generation, old_status, live_deps, problems, now, capacity.advisory)
    for cond in C.transitions(old_status.get("conditions"), status["conditions"]):
        bad = (cond["type"] == C.DEGRADED and cond["status"] == "True") or (
            cond["type"] in (C.READY, C.CANARY_READY) and cond["status"] != "True"
        )
        # The analysis loop posts its own Events, with the numbers, for CanaryHealthy's changes.
        if cond["type"] in (C.PROGRESSING, C.CANARY_HEALTHY) or any(e.reason == cond["reason"] for e in events):
            continue
        events.append(Event("Warning" if bad else "Normal", cond["reason"], f"{cond['type']}={cond['status']}: {cond['message']}"))
    patch = dict(status)
    if not spec.autoscaling.enabled:
        # A merge patch removes a key set to null: the autoscaler's report goes with the autoscaler.
        patch.update({k: None for k in AUTOSCALER_STATUS_KEYS if old_status.get(k) is not None})
    owned = [k for k in OWNED_STATUS_KEYS if k in status]  # status.canary may be the analysis loop's
    stale = set(old_status.get("canary") or {}) - set(status.get("canary") or {}) if "canary" in status else set()
    if stale:
        # What the analysis loop kept in status.canary goes with the analysis.
        patch["canary"] = {**status["canary"], **{k: None for k in stale}}
    if {k: old_status.get(k) for k in owned} != {k: status.get(k) for k in owned} or len(patch) > len(status):
        kube.patch_status(namespace, name, patch)
        writes += 1
    return Outcome(status=status, events=events, problems=problems, writes=writes, retry=retry)
