"""The CRD is structural, documented, bounded and carries CEL rules, both subresources and printer columns."""

import pathlib
import re

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


# --- what cannot be rendered is refused (the CRD) and reported (operator/validation.py, for objects
# stored before the CRD had the rule)

from pixtral_operator import validation as V  # noqa: E402
from pixtral_operator.render import desired_children  # noqa: E402
from pixtral_operator.settings import OperatorSettings  # noqa: E402
from pixtral_operator.spec import Tracing, parse  # noqa: E402
from pixtral_runtime.router.config import OTLP_PROTOCOLS  # noqa: E402
from pixtral_runtime.supervisor.command import MANAGED_FLAGS  # noqa: E402

ENGINE = SPEC["engine"]["properties"]
CANARY = SPEC["canary"]["properties"]
OWNER = {"apiVersion": "serving.pixtral.dev/v1alpha1", "kind": "PixtralDeployment", "metadata": {"name": "x", "uid": "u"}}
EVERY_CHILD = {  # a spec that renders every kind of child
    "canary": {"weight": 10, "engine": {"image": "r:2"}},
    "router": {"apiKeysSecretRef": {"name": "keys"}},
    "model": {"revision": "main", "source": {"hub": {"tokenSecretRef": {"name": "hf"}}}},
    "tracing": {"endpoint": "http://otel-collector.observability:4317"},
}


def _children(name, raw):
    spec = parse(name, "team", raw)
    return desired_children(spec, OperatorSettings(monitoring="podmonitor"), OWNER, {"stable": 1, "canary": 1})


def _root_rules():
    return [r["rule"] for r in SCHEMA["x-kubernetes-validations"]]


def test_root_rules_bound_the_name_with_the_operators_constant():
    rules = _root_rules()
    assert f"self.metadata.name.size() <= {V.MAX_NAME_LENGTH}" in rules
    assert f"self.metadata.name.matches('{V.DNS_1035_LABEL.pattern}')" in rules


def test_the_longest_allowed_name_renders_valid_child_names_and_the_bound_is_tight():
    names = [c["metadata"]["name"] for c in _children("a" * V.MAX_NAME_LENGTH, EVERY_CHILD)]
    assert len(names) >= 10
    assert all(len(n) <= V.DNS_LABEL_MAX and V.DNS_1035_LABEL.match(n) for n in names), names
    # One more character would overflow a child: the bound is not stricter than it needs to be.
    assert max(len(n) for n in names) == V.DNS_LABEL_MAX


def test_env_names_the_crd_refuses_are_the_ones_the_renderer_sets():
    rule = ENGINE["env"]["items"]["properties"]["name"]["x-kubernetes-validations"][0]["rule"]
    in_rule = set(re.findall(r"'([A-Z_]+)'", rule))
    assert in_rule == set(V.OPERATOR_ENV_NAMES)
    deployment = next(c for c in _children("demo", EVERY_CHILD) if c["kind"] == "Deployment" and c["metadata"]["name"] == "demo-stable")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert {e["name"] for e in container["env"]} == set(V.OPERATOR_ENV_NAMES)


def test_extra_args_rule_lists_the_supervisors_managed_flags_and_aliases():
    rule = ENGINE["extraArgs"]["x-kubernetes-validations"][0]["rule"]
    listed = re.search(r"in (\[[^\]]*\])", rule).group(1)
    assert set(re.findall(r"'([^']+)'", listed)) == set(MANAGED_FLAGS)
    for aliases in MANAGED_FLAGS.values():
        for alias in aliases:
            assert f"'{alias}'" in rule


def test_the_canary_is_held_to_the_same_rules_as_stable():
    assert CANARY["engine"]["properties"]["extraArgs"] == ENGINE["extraArgs"]
    assert CANARY["engine"]["properties"]["env"] == ENGINE["env"]
    assert CANARY["model"]["properties"]["source"] == SPEC["model"]["properties"]["source"]
    assert "x-kubernetes-preserve-unknown-fields" not in CANARY["model"]["properties"]["source"]


def test_the_tracing_endpoint_pattern_is_the_operators():
    tracing = SPEC["tracing"]["properties"]
    assert tracing["endpoint"]["pattern"] == V.TRACING_ENDPOINT.pattern
    assert tuple(tracing["protocol"]["enum"]) == OTLP_PROTOCOLS
    assert tracing["protocol"]["default"] == Tracing.protocol and tracing["samplingRatio"]["default"] == Tracing.sampling_ratio


def test_quantities_have_a_rule():
    for key in ("cpu", "memory"):
        (rule,) = SPEC["resources"]["properties"][key]["x-kubernetes-validations"]
        assert "isQuantity(self)" in rule["rule"] and "isGreaterThan(quantity('0'))" in rule["rule"]


# (name, spec, field the operator names): rules of the CRD that the operator checks itself too.
# e2e/test_specs.py sends the same kinds of spec to the real API server.
REFUSED = [
    ("a" * 56, {}, "metadata.name"),
    ("bad.dotted", {}, "metadata.name"),
    ("1bad", {}, "metadata.name"),
    ("bad-", {}, "metadata.name"),
    ("demo", {"engine": {"env": [{"name": "HF_HOME", "value": "/x"}]}}, "spec.engine.env[0].name"),
    ("demo", {"canary": {"engine": {"env": [{"name": "A"}, {"name": "VLLM_CACHE_ROOT"}]}}}, "spec.canary.engine.env[1].name"),
    ("demo", {"engine": {"extraArgs": ["--max_model_len", "9"]}}, "spec.engine.extraArgs[0]"),
    ("demo", {"engine": {"extraArgs": ["--dtype", "half", "-tp", "2"]}}, "spec.engine.extraArgs[2]"),
    ("demo", {"canary": {"engine": {"extraArgs": ["--tensor-par=2"]}}}, "spec.canary.engine.extraArgs[0]"),
    ("demo", {"canary": {"model": {"source": {"hostPath": {"path": "/w"}, "hub": {}}}}}, "spec.canary.model.source"),
    ("demo", {"canary": {"model": {"source": {"hostPath": {"path": "w"}}}}}, "spec.canary.model.source.hostPath.path"),
    ("demo", {"canary": {"model": {"source": {"s3": {}}}}}, "spec.canary.model.source"),
    ("demo", {"canary": {"model": {"source": {"pvc": {"claimName": ""}}}}}, "spec.canary.model.source.pvc.claimName"),
    ("demo", {"resources": {"cpu": "4 cores"}}, "spec.resources.cpu"),
    ("demo", {"resources": {"cpu": 0}}, "spec.resources.cpu"),
    ("demo", {"resources": {"memory": "-1Gi"}}, "spec.resources.memory"),
    ("demo", {"resources": {"memory": "48GB"}}, "spec.resources.memory"),
    ("demo", {"tracing": {"endpoint": "otel-collector:4317"}}, "spec.tracing.endpoint"),
    ("demo", {"tracing": {"endpoint": "http://user:pw@otel-collector:4317"}}, "spec.tracing.endpoint"),
    ("demo", {"tracing": {"endpoint": "http://c:4318/v1/traces?x=1"}}, "spec.tracing.endpoint"),
    ("demo", {"tracing": {"endpoint": "http://c:4317", "protocol": "http/json"}}, "spec.tracing.protocol"),
    ("demo", {"tracing": {"samplingRatio": 2}}, "spec.tracing.samplingRatio"),
]


@pytest.mark.parametrize("name, raw, field", REFUSED)
def test_operator_check_names_the_field(name, raw, field):
    problems = V.spec_problems(name, raw)
    assert field in [p.field for p in problems], problems
    assert all(p.field in p.message for p in problems)


@pytest.mark.parametrize(
    "name, raw",
    [
        ("a" * 55, {}),
        ("demo-2", {"resources": {"cpu": "500m", "memory": 4294967296}}),
        ("demo", {"resources": {"cpu": "0.5", "memory": "1.5Gi"}}),
        ("demo", {"resources": {"cpu": "1e3", "memory": "+48Gi"}}),
        ("demo", {"engine": {"extraArgs": ["--dtype", "bfloat16", "--tokenizer", "t", "--config", "c", "-1"]}}),
        ("demo", {"engine": {"env": [{"name": "HF_HUB_OFFLINE", "value": "1"}, {"name": "PIXTRAL_LOG_LEVEL"}]}}),
        ("demo", {"canary": {"model": {"source": {"pvc": {"claimName": "w2"}}}, "engine": {"extraArgs": []}}}),
        ("demo", EVERY_CHILD),
        ("demo", {"tracing": {"endpoint": "https://otlp.example.com:443/v1/traces", "protocol": "http/protobuf",
                              "samplingRatio": 0}}),
    ],
)
def test_operator_check_accepts_the_edge_of_each_rule(name, raw):
    assert V.spec_problems(name, raw) == []


@pytest.mark.parametrize(
    "value, positive",
    [("4", True), (4, True), ("500m", True), ("48Gi", True), ("1.5Gi", True), (".5", True), ("1e3", True), ("0.5", True), (0.5, False),
     ("0", False), (0, False), (-1, False), ("-1Gi", False), ("48GB", False), ("4 cores", False), ("", False),
     (True, False), (None, False), ("0.0", False)],
)
def test_positive_quantity(value, positive):
    assert V.is_positive_quantity(value) is positive


@pytest.mark.parametrize(
    "name, raw, reason, field",
    [
        ("a" * 60, {}, "NameTooLong", "metadata.name"),
        ("demo", {"engine": {"env": [{"name": "HF_HOME", "value": "/x"}]}}, "ReservedEnvName", "spec.engine.env[0].name"),
        ("demo", {"canary": {"weight": 5, "engine": {"extraArgs": ["--port=1"]}}}, "ManagedExtraArg", "spec.canary.engine.extraArgs[0]"),
        ("demo", {"resources": {"memory": "lots"}}, "InvalidQuantity", "spec.resources.memory"),
    ],
)
def test_an_object_stored_before_the_rule_is_degraded_and_nothing_is_applied(name, raw, reason, field):
    from fakekube import FakeKube, gpu_node, pxd
    from pixtral_operator.conditions import find
    from pixtral_operator.reconcile import reconcile

    kube = FakeKube(nodes=[gpu_node("gpu-0")])
    out = reconcile(pxd(name=name, spec=raw), kube, OperatorSettings(), now="t0")
    degraded = find(out.status["conditions"], "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", reason)
    assert field in degraded["message"]
    assert kube.kinds_named() == set()
    assert any(e.type == "Warning" and e.reason == reason for e in out.events)
