"""The CRD is structural, documented, bounded and carries CEL rules, both subresources and printer columns."""

import pathlib

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
CRD = yaml.safe_load((ROOT / "manifests/crds/serving.pixtral.dev_pixtraldeployments.yaml").read_text())
VERSION = CRD["spec"]["versions"][0]
SCHEMA = VERSION["schema"]["openAPIV3Schema"]
SPEC = SCHEMA["properties"]["spec"]["properties"]


def _walk(node, path="", skip_meta=True):
    yield path, node
    for name, child in (node.get("properties") or {}).items():
        if skip_meta and path == "" and name == "metadata":
            continue
        yield from _walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")


def test_names_and_scope():
    assert CRD["spec"]["group"] == "serving.pixtral.dev"
    assert CRD["spec"]["names"]["kind"] == "PixtralDeployment"
    assert CRD["spec"]["names"]["shortNames"] == ["pxd"]
    assert VERSION["name"] == "v1alpha1"


def test_every_field_has_a_description():
    missing = [p for p, node in _walk(SCHEMA) if p and p.count(".") >= 1 and not p.endswith("[]") and "description" not in node]
    assert missing == []


def test_every_field_is_typed_or_explicitly_open():
    untyped = [
        p
        for p, node in _walk(SCHEMA)
        if p and "type" not in node and not node.get("x-kubernetes-int-or-string") and not node.get("x-kubernetes-preserve-unknown-fields")
    ]
    assert untyped == []


def test_subresources():
    assert VERSION["subresources"]["status"] == {}
    assert VERSION["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }


def test_printer_columns():
    names = [c["name"] for c in VERSION["additionalPrinterColumns"]]
    for expected in ("Ready", "Replicas", "Canary", "Queue", "Age"):
        assert expected in names


def test_cel_rules_present():
    text = yaml.safe_dump(CRD)
    assert "x-kubernetes-validations" in text
    rules = [r["rule"] for r in SCHEMA["properties"]["spec"]["x-kubernetes-validations"]]
    assert any("minReplicas <= self.autoscaling.maxReplicas" in r for r in rules)


@pytest.mark.parametrize(
    "path, key, value",
    [
        (("engine", "tensorParallelSize"), "enum", [1, 2, 4, 8]),
        (("engine", "maxModelLen"), "maximum", 131072),
        (("engine", "imagesPerPrompt"), "minimum", 1),
        (("canary", "weight"), "minimum", 0),
        (("canary", "weight"), "maximum", 100),
        (("autoscaling", "minReplicas"), "minimum", 0),
        (("model", "name"), "default", "mistralai/Pixtral-12B-2409"),
        (("engine", "tensorParallelSize"), "default", 1),
    ],
)
def test_bounds_enums_defaults(path, key, value):
    node = SPEC[path[0]]["properties"][path[1]]
    assert node[key] == value


def test_crd_reference_doc_is_generated_from_the_schema():
    from pixtral_operator.crdref import main

    assert main(["--check"]) == 0, "docs/crd-reference.md is stale: run python -m pixtral_operator.crdref"
