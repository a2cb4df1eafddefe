"""The chart's alerts (charts/pixtral-operator/files/alerts.yaml): valid rules, the behaviour the
promtool unit tests in tests/promtool/ pin down, and the PrometheusRule that carries them.

promtool is built beside Prometheus by `make binaries` (e2e/tools/build-binaries.sh); until then these
skip, saying so.
e2e/test_alerts.py makes one of them fire in the local cluster's Prometheus.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml
from test_chart import (  # noqa: F401  (fixtures)
    ALL_VALUES_FILE,
    by_kind,
    helm,  # noqa: F401
    one,
    render,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
ALERTS_FILE = REPO_ROOT / "charts" / "pixtral-operator" / "files" / "alerts.yaml"
PROMTOOL_TESTS = Path(__file__).resolve().parent / "promtool"


def alert_names() -> list[str]:
    return [rule["alert"] for group in yaml.safe_load(ALERTS_FILE.read_text())["groups"] for rule in group["rules"]]


def test_rules_pass_promtool_check(promtool):
    result = subprocess.run([promtool, "check", "rules", str(ALERTS_FILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_names())} rules found" in result.stdout


def test_every_alert_has_a_promtool_unit_test():
    tested = {case["alertname"] for file in PROMTOOL_TESTS.glob("*_test.yaml")
              for test in yaml.safe_load(file.read_text())["tests"] for case in test["alert_rule_test"]}
    assert tested == set(alert_names())


def test_alerts_fire_as_the_unit_tests_say(promtool):
    files = sorted(PROMTOOL_TESTS.glob("*_test.yaml"))
    result = subprocess.run([promtool, "test", "rules", *map(str, files)], capture_output=True, text=True,
                            cwd=PROMTOOL_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_severity_summary_and_description():
    for group in yaml.safe_load(ALERTS_FILE.read_text())["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
            assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_every_alert_is_documented():
    operations = (REPO_ROOT / "docs" / "operations.md").read_text()
    for name in alert_names():
        assert f"`{name}`" in operations, f"docs/operations.md does not explain {name}"


def test_prometheus_rule_is_off_by_default(render):  # noqa: F811  (the fixture imported above)
    assert by_kind(render(), "PrometheusRule") == []


def test_prometheus_rule_carries_the_alerts_file_unchanged(render):  # noqa: F811  (the fixture imported above)
    objects = render(values_files=(ALL_VALUES_FILE,), namespace="platform")
    rule = one(objects, "PrometheusRule")
    assert rule["metadata"]["namespace"] == "platform"
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    # Helm must not have templated the alerts' own {{ $labels... }}.
    assert rule["spec"] == yaml.safe_load(ALERTS_FILE.read_text())
