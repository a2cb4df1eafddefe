"""Every panel of the chart's Grafana dashboard returns series from live data: the local cluster's
Prometheus scraping a PixtralDeployment that scaled from zero for real traffic through its router.

The queries are the dashboard's own (charts/pixtral-operator/files/dashboard.json) with Grafana's
variables filled in the way Grafana does: $namespace/$deployment for this deployment, $__rate_interval
and $__range as intervals.
"""

from __future__ import annotations

import contextlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from autoscale_support import prometheus_series
from localcluster import wait_for
from pixtral_e2e import (  # noqa: F401  (fixtures)
    apply,
    chat,
    chat_body,
    crds,
    local_images,
    operator,
    pxd_manifest,
    router_url,
    tiny_model,
    tiny_model_dir,
    tiny_spec,
    wait_condition,
)

DASHBOARD_FILE = Path(__file__).resolve().parent.parent / "charts" / "pixtral-operator" / "files" / "dashboard.json"
NAME = "board"
STARTUP = 600  # seconds for a vLLM pod to become ready on a busy, shared 2-core machine
REQUESTS = 6


def panel_queries(variables: dict[str, str]) -> dict[str, str]:
    queries = {}
    for panel in json.loads(DASHBOARD_FILE.read_text())["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for name, value in variables.items():
                expr = expr.replace(f"${name}", value)
            queries[f"{panel['title']} / {target['refId']}"] = expr
    return queries


def test_every_panel_returns_series_from_live_data(cluster, namespace, operator, tiny_model):
    spec = tiny_spec(tiny_model, replicas=0,
                     autoscaling={"enabled": True, "minReplicas": 0, "maxReplicas": 1, "targetQueuePerReplica": 2,
                                  "scaleDownWindowSeconds": 600},
                     router={"pendingTimeoutSeconds": STARTUP, "requestTimeoutSeconds": STARTUP + 120})
    apply(cluster, namespace, pxd_manifest(NAME, spec))
    wait_condition(cluster, namespace, NAME, "Ready", "True", STARTUP, reason="ScaledToZero")
    url = router_url(cluster, namespace, NAME)

    # The first requests wait in the router for the track to wake (a scale-up event); images and
    # several output tokens give TTFT and inter-token latency samples.
    body = chat_body(images=1, max_tokens=8, min_tokens=8, ignore_eos=True)
    with ThreadPoolExecutor(REQUESTS) as pool:
        replies = list(pool.map(lambda _: chat(url, body, key=None, timeout=STARTUP + 180), range(REQUESTS)))
    assert [r.status_code for r in replies] == [200] * REQUESTS, [r.text for r in replies if r.status_code != 200]

    variables = {"namespace": namespace, "deployment": NAME, "__rate_interval": "2m", "__range": "30m"}
    missing = panel_queries(variables)

    def every_panel_has_series() -> bool:
        for title in [t for t, promql in missing.items() if prometheus_series(cluster.prometheus_url, promql, timeout=10)]:
            del missing[title]
        return not missing

    with contextlib.suppress(AssertionError):  # reported below, panel by panel
        wait_for(every_panel_has_series, 120, "series for every panel", interval=2)
    assert not missing, "panels without data:\n" + "\n".join(f"{t}: {q}" for t, q in missing.items())
