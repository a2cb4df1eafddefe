"""spec.canary.analysis in the CRD: every field Policy.from_spec reads, with Policy's defaults stated
(the operator applies them; the CRD sets none, so the defaults live once)."""

import pathlib
import re

import yaml
from pixtral_operator.canary_analysis import LATENCY_METRICS, Policy

ROOT = pathlib.Path(__file__).resolve().parents[1]
CRD = yaml.safe_load((ROOT / "manifests/crds/serving.pixtral.dev_pixtraldeployments.yaml").read_text())
VERSION = CRD["spec"]["versions"][0]
ANALYSIS = VERSION["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["canary"]["properties"]["analysis"]
STATUS = VERSION["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["canary"]["properties"]


def test_the_schema_has_exactly_the_fields_the_policy_reads():
    fields = set(ANALYSIS["properties"])
    assert fields == {"steps", "intervalSeconds", "minRequests", "maxErrorRate", "maxLatencyRatio",
                      "latencyMetric", "latencyQuantile", "maxFailedChecks"}
    d = Policy()
    spelled = {"steps": list(d.steps), "intervalSeconds": d.interval_seconds, "minRequests": d.min_requests,
               "maxErrorRate": d.max_error_rate, "maxLatencyRatio": d.max_latency_ratio,
               "latencyMetric": d.latency_metric, "latencyQuantile": d.latency_quantile,
               "maxFailedChecks": d.max_failed_checks}
    assert set(spelled) == fields and Policy.from_spec(spelled) == d


def test_descriptions_state_the_policys_defaults_and_the_crd_sets_none():
    defaults = Policy()
    expected = {
        "steps": str(list(defaults.steps)), "intervalSeconds": f"{defaults.interval_seconds:g}",
        "minRequests": str(defaults.min_requests), "maxErrorRate": f"{defaults.max_error_rate:g}",
        "maxLatencyRatio": f"{defaults.max_latency_ratio:g}", "latencyMetric": defaults.latency_metric,
        "latencyQuantile": f"{defaults.latency_quantile:g}", "maxFailedChecks": str(defaults.max_failed_checks),
    }
    for field, value in expected.items():
        node = ANALYSIS["properties"][field]
        assert "default" not in node, field
        assert re.search(rf"\(default {re.escape(value)}\)", node["description"]), (field, node["description"])


def test_latency_metric_enum_is_the_policys():
    assert ANALYSIS["properties"]["latencyMetric"]["enum"] == list(LATENCY_METRICS)


def test_status_keeps_every_key_the_loop_writes():
    # A structural schema prunes undeclared status fields: each key the loop stores must be declared.
    written = {"phase", "step", "stepStartedAt", "failedChecks", "paused", "specHash", "handledAction", "message",
               "reason", "finishedAt", "retired", "lastCheck", "weight", "replicas", "readyReplicas"}
    assert written <= set(STATUS)
    assert {"time", "reason", "message", "canary", "stable", "maxErrorRate", "maxLatencyRatio"} <= set(
        STATUS["lastCheck"]["properties"])


def test_kubectl_get_shows_the_canary_weight_and_phase_from_the_status():
    columns = {c["name"]: c["jsonPath"] for c in VERSION["additionalPrinterColumns"]}
    assert columns["Canary"] == ".status.canary.weight" and columns["Phase"] == ".status.canary.phase"
