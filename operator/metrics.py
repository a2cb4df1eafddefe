"""The operator's own Prometheus metrics (served on PIXTRAL_METRICS_PORT)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter(
    "pixtral_operator_reconciles_total", "Reconciles of PixtralDeployments by result", ["namespace", "result"]
)
RECONCILE_SECONDS = Histogram(
    "pixtral_operator_reconcile_duration_seconds",
    "Time one reconcile takes",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
# Watch events of the children: `reconcile` ran a pass of the owner, `own-write` was the echo of
# the operator's own apply and ran none.
CHILD_EVENTS = Counter(
    "pixtral_operator_child_events_total", "Watch events of owned children by outcome", ["kind", "outcome"]
)
WRITES = Counter("pixtral_operator_api_writes_total", "Writes to the Kubernetes API made by reconciles", ["namespace"])
DEGRADED = Gauge(
    "pixtral_operator_degraded", "1 when a PixtralDeployment is Degraded (spec rejected)", ["namespace", "name"]
)
SCALE_EVENTS = Counter(
    "pixtral_operator_scale_events_total", "Replica changes made by the autoscaler", ["namespace", "name", "track", "direction"]
)
# One autoscaler tick of one object, reads and writes included. A tick much longer than
# PIXTRAL_AUTOSCALE_SECONDS means the operator is starved or the API server or Prometheus is slow;
# the decision then rests on older readings (scale_decision holds each until the next one).
AUTOSCALE_TICK_SECONDS = Histogram(
    "pixtral_operator_autoscale_tick_duration_seconds",
    "Time one autoscaler tick of one PixtralDeployment takes",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
# What the autoscaler saw on its last tick, per track of an autoscaled PixtralDeployment: `desired`
# is the replica count it asked for, `ready` what the track's Deployment reported (the dashboard's
# "replicas desired vs ready"). Removed when the object goes away.
TRACK_REPLICAS = Gauge(
    "pixtral_operator_track_replicas", "Replicas of an autoscaled track by state (desired, ready)",
    ["namespace", "name", "track", "state"],
)
