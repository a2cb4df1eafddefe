"""The chart's alerts in a real Prometheus: a Degraded PixtralDeployment fires
PixtralDeploymentDegraded, scraped from the operator's own /metrics, and healing the spec resolves it.

The rule file is charts/pixtral-operator/files/alerts.yaml with the expressions unchanged; only `for`
is shortened, since a test cannot wait the five minutes an operator should (tests/promtool/ pins the
real `for` durations).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import yaml
from localcluster import wait_for
from pixtral_e2e import (  # noqa: F401  (fixtures)
    apply,
    crds,
    local_images,
    operator,
    pxd_manifest,
    tiny_model,
    tiny_model_dir,
    tiny_spec,
    wait_condition,
)

ALERTS_FILE = Path(__file__).resolve().parent.parent / "charts" / "pixtral-operator" / "files" / "alerts.yaml"
RULES_NAME = "pixtral-alerts"
NAME = "no-keys"


def alerts_with_short_for() -> dict:
    rules = yaml.safe_load(ALERTS_FILE.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["for"] = "3s"
    return rules


def degraded_alerts(cluster, namespace: str) -> list[dict]:
    alerts = httpx.get(f"{cluster.prometheus_url}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
    return [a for a in alerts if a["labels"].get("alertname") == "PixtralDeploymentDegraded"
            and a["labels"].get("namespace") == namespace and a["labels"].get("name") == NAME]


def test_degraded_deployment_fires_and_resolves_its_alert(cluster, namespace, operator, tiny_model):
    cluster.load_rules(RULES_NAME, alerts_with_short_for())
    try:
        # A key Secret that does not exist: the API server admits it, the operator refuses it.
        spec = tiny_spec(tiny_model, replicas=0, router={"apiKeysSecretRef": {"name": "keys-not-created-yet"}})
        apply(cluster, namespace, pxd_manifest(NAME, spec))
        wait_condition(cluster, namespace, NAME, "Degraded", "True", 60, reason="SecretNotFound")

        (firing,) = wait_for(lambda: [a for a in degraded_alerts(cluster, namespace) if a["state"] == "firing"],
                             90, "PixtralDeploymentDegraded to fire for the PixtralDeployment")
        assert firing["labels"]["severity"] == "warning"
        assert f"{namespace}/{NAME} is Degraded" in firing["annotations"]["summary"]

        cluster.kubectl("create", "secret", "generic", "keys-not-created-yet", "-n", namespace,
                        "--from-literal=tenant-a=sk-alerts")
        wait_condition(cluster, namespace, NAME, "Degraded", "False", 60)
        wait_for(lambda: degraded_alerts(cluster, namespace) == [], 90, "the alert to resolve once the spec heals")
    finally:
        cluster.remove_rules(RULES_NAME)
