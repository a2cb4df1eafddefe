"""What the canary analysis' stored state means for the children and the conditions (pure).

The analysis loop (canary_loop.py) owns `status.canary` while `spec.canary.analysis` is set; the
reconcile renders from the spec *and* that state, through :func:`effective_spec`, so both agree on
the router's weight, the canary's pods and, once a canary is promoted, the stable track's settings,
and neither undoes the other's writes.

The stored state applies only to the canary it was about: `status.canary.specHash` is
:func:`canary_hash` of the canary track when the analysis began. A changed canary spec starts a new
analysis (Pending); an unchanged one stays rolled back (or promoted) however often it is reconciled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from pixtral_operator import canary_analysis as A
from pixtral_operator import conditions as C
from pixtral_operator.events import Event
from pixtral_operator.spec import PixtralSpec

CANARY_HEALTHY = C.CANARY_HEALTHY


def canary_hash(spec: PixtralSpec) -> str:
    """Hash of what the canary runs (not its replica count): a change starts a new analysis."""
    track = spec.canary_track
    if track is None:
        return ""
    data = dataclasses.asdict(dataclasses.replace(track, replicas=0))
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def analysed(spec: PixtralSpec) -> bool:
    return spec.canary is not None and spec.canary_track is not None and spec.canary.analysis is not None


def stored_state(spec: PixtralSpec, status: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """status.canary if it belongs to the canary in the spec, else the state of a new analysis."""
    stored = (status or {}).get("canary") or {}
    if analysed(spec) and stored.get("specHash") == canary_hash(spec) and stored.get("phase") in A.PHASES:
        return stored
    return {"phase": A.PENDING}


def router_weight(spec: PixtralSpec, stored: Mapping[str, Any]) -> int:
    assert spec.canary is not None and spec.canary.analysis is not None
    return A.current_weight(spec.canary.analysis, A.StepState.from_dict(dict(stored)))


def promoted(stored: Mapping[str, Any]) -> bool:
    """The stable track runs the canary's settings (from the start of the promotion on)."""
    return stored.get("phase") in (A.PROMOTING, A.PROMOTED)


def retired(stored: Mapping[str, Any]) -> bool:
    """The canary's pods go: after a rollback or promotion, once the router sends them nothing."""
    return bool(stored.get("retired")) and stored.get("phase") in (A.ROLLED_BACK, A.PROMOTED)


def effective_spec(spec: PixtralSpec, status: Mapping[str, Any] | None) -> PixtralSpec:
    """The spec the children are rendered from: unchanged without analysis; with it, the router
    weight of the current step, at least one canary pod while it is analysed (so that it can become
    ready), none once retired, and the canary's settings on the stable track once promoted."""
    if not analysed(spec):
        return spec
    assert spec.canary is not None and spec.canary_track is not None
    stored = stored_state(spec, status)
    canary_pods = 0 if retired(stored) else max(1, spec.canary_track.replicas)
    low = 0 if retired(stored) else max(1, spec.canary.min_replicas)
    high = 0 if retired(stored) else max(low, spec.canary.max_replicas)
    canary = dataclasses.replace(spec.canary, weight=router_weight(spec, stored), replicas=canary_pods,
                                 min_replicas=low, max_replicas=high)
    canary_track = dataclasses.replace(spec.canary_track, replicas=canary_pods)
    stable = spec.stable
    if promoted(stored):
        stable = dataclasses.replace(spec.canary_track, track="stable", replicas=spec.stable.replicas)
    return dataclasses.replace(spec, canary=canary, canary_track=canary_track, stable=stable)


def healthy_condition(spec: PixtralSpec, status: Mapping[str, Any] | None) -> C.Condition | None:
    """CanaryHealthy from the last check: True while checks pass, False after a failed one or a
    rollback, Unknown before the first check."""
    if not analysed(spec):
        return None
    stored = stored_state(spec, status)
    phase = stored.get("phase")
    last = stored.get("lastCheck") or {}
    message = str(stored.get("message") or last.get("message") or "")
    if phase == A.ROLLED_BACK:
        return C.Condition(CANARY_HEALTHY, False, str(stored.get("reason") or "RolledBack"), message)
    if phase == A.FAILED:
        return C.Condition(CANARY_HEALTHY, None, "AnalysisFailed", message)
    if phase == A.PROMOTED or phase == A.PROMOTING:
        return C.Condition(CANARY_HEALTHY, True, phase, message)
    if last.get("reason") == A.CHECK_FAILED:
        return C.Condition(CANARY_HEALTHY, False, A.CHECK_FAILED, str(last.get("message", "")))
    if last.get("reason") == A.CHECK_PASSED:
        return C.Condition(CANARY_HEALTHY, True, A.CHECK_PASSED, str(last.get("message", "")))
    return C.Condition(CANARY_HEALTHY, None, "NoCheckYet", message or "no check has passed or failed yet")


# Manual control: `kubectl annotate pxd NAME serving.pixtral.dev/canary=pause --overwrite`. An
# action takes effect when the annotation's value changes (status.canary.handledAction is the last
# one acted on); to repeat one, remove the annotation first (docs/canary.md, "Manual control").
ACTION_ANNOTATION = "serving.pixtral.dev/canary"
PAUSE, RESUME, PROMOTE, ABORT = "pause", "resume", "promote", "abort"
ACTIONS = (PAUSE, RESUME, PROMOTE, ABORT)


def manual_action(stored: Mapping[str, Any], action: str | None, now: float) -> tuple[dict[str, Any], Event | None]:
    """Pure: the state after the annotation's value became `action`, and the Event that says so."""
    out = dict(stored)
    out["handledAction"] = action
    phase = out.get("phase")
    if action is None:
        return out, None
    if action not in ACTIONS:
        return out, Event("Warning", "CanaryActionUnknown",
                          f"annotation {ACTION_ANNOTATION}={action!r}: not one of {', '.join(ACTIONS)}; ignored")
    if phase in A.FINISHED_PHASES:
        return out, Event("Warning", "CanaryActionIgnored",
                          f"annotation {ACTION_ANNOTATION}={action}: the analysis is already {phase}")
    if action == PAUSE:
        out["paused"] = True
        if phase == A.PROGRESSING:
            out["phase"] = A.PAUSED
        return out, Event("Normal", "CanaryPaused", f"analysis paused by annotation at phase {phase}")
    if action == RESUME:
        out["paused"] = False
        if phase == A.PAUSED:
            # The next check looks at a full interval of traffic after the pause.
            out["phase"], out["stepStartedAt"] = A.PROGRESSING, now
        return out, Event("Normal", "CanaryResumed", f"analysis resumed by annotation at phase {out['phase']}")
    if action == PROMOTE:
        out["phase"] = A.PROMOTING
        return out, Event("Normal", "CanaryPromoting",
                          f"promotion requested by annotation at phase {phase}: the stable track takes the canary's settings")
    out.update(phase=A.ROLLED_BACK, reason="Aborted", finishedAt=now,
               message=f"aborted by annotation at phase {phase}")
    return out, Event("Warning", "CanaryRolledBack", f"aborted by annotation at phase {phase}: canary weight -> 0")
