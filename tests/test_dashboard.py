"""The chart's Grafana dashboard (charts/pixtral-operator/files/dashboard.json): every panel query is
valid PromQL over metrics that exist (ours, and vLLM's at the pinned version), and the chart ships
the file unchanged. e2e/test_dashboard.py runs every query against live data.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from test_chart import (  # noqa: F401  (fixtures)
    ALL_VALUES_FILE,
    by_kind,
    helm,  # noqa: F401
    one,
    render,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_FILE = REPO_ROOT / "charts" / "pixtral-operator" / "files" / "dashboard.json"
# Metric families our code defines: the router's and the operator's.
OWN_METRIC_SOURCES = (REPO_ROOT / "runtime" / "router" / "metrics.py", REPO_ROOT / "operator" / "metrics.py")
# Names vLLM removed; a dashboard that still uses them shows nothing.
REMOVED_VLLM_METRICS = ("vllm:gpu_cache_usage_perc", "vllm:time_per_output_token_seconds")


def dashboard() -> dict:
    return json.loads(DASHBOARD_FILE.read_text())


def panel_queries(variables: dict[str, str]) -> dict[str, str]:
    """'panel title / refId' -> PromQL with the dashboard's variables replaced by `variables`."""
    queries = {}
    for panel in dashboard()["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for name, value in variables.items():
                expr = expr.replace(f"${name}", value)
            queries[f"{panel['title']} / {target['refId']}"] = expr
    return queries


GRAFANA_VARIABLES = {"__rate_interval": "1m", "__range": "1h", "namespace": "team-a", "deployment": "chat"}


def metric_names(expr: str) -> set[str]:
    names = set(re.findall(r"\b((?:vllm:|pixtral_)[a-z_:]+)", expr))
    # A histogram is queried through its _bucket series.
    return {name.removesuffix("_bucket") for name in names}


def own_metric_names() -> set[str]:
    text = "\n".join(path.read_text() for path in OWN_METRIC_SOURCES)
    return set(re.findall(r'"(pixtral_[a-z_]+)"', text))


def vllm_metric_names() -> set[str]:
    vllm = pytest.importorskip("vllm")
    loggers = Path(vllm.__file__).parent / "v1" / "metrics" / "loggers.py"
    return set(re.findall(r'"(vllm:[a-z_]+)"', loggers.read_text()))


def test_panels_are_well_formed():
    board = dashboard()
    assert board["uid"] and board["title"]
    assert [v["name"] for v in board["templating"]["list"]] == ["datasource", "namespace", "deployment"]
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert "$namespace" in target["expr"] and "$deployment" in target["expr"], (panel["title"], target["expr"])


def test_every_query_is_valid_promql(tmp_path, promtool):
    rules = [{"record": f"panel:{index}", "expr": expr} for index, expr in enumerate(panel_queries(GRAFANA_VARIABLES).values())]
    path = tmp_path / "panels.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_metric_exists():
    ours, vllms = own_metric_names(), vllm_metric_names()
    for title, expr in panel_queries(GRAFANA_VARIABLES).items():
        for name in metric_names(expr):
            family = re.sub(r"_total$", "", name)
            assert name in vllms or name in ours or family in ours, f"{title}: {name} is not a metric we or vLLM export"


def test_no_removed_vllm_metric_names():
    text = DASHBOARD_FILE.read_text()
    for name in REMOVED_VLLM_METRICS:
        assert name not in text


def test_dashboard_covers_what_operators_look_at():
    queries = " ".join(panel_queries(GRAFANA_VARIABLES).values())
    for metric in ("pixtral_router_requests_total", "vllm:time_to_first_token_seconds_bucket",
                   "vllm:inter_token_latency_seconds_bucket", "vllm:num_requests_waiting", "vllm:num_requests_running",
                   "vllm:kv_cache_usage_perc", "pixtral_operator_track_replicas", "pixtral_operator_scale_events_total"):
        assert metric in queries, metric
    assert "by (tenant, code)" in queries and "by (track)" in queries


def test_dashboard_is_off_by_default(render):  # noqa: F811  (the fixture imported above)
    assert [o for o in by_kind(render(), "ConfigMap") if o["metadata"]["name"].endswith("-dashboard")] == []


def test_dashboard_configmap_carries_the_file_and_the_sidecar_label(render):  # noqa: F811  (the fixture imported above)
    objects = render(values_files=(ALL_VALUES_FILE,), namespace="platform")
    (config_map,) = [o for o in by_kind(objects, "ConfigMap") if o["metadata"]["name"].endswith("-dashboard")]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["labels"]["team"] == "platform"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "Serving"}
    assert json.loads(config_map["data"]["pixtral-deployments.json"]) == dashboard()
