"""Derived names: no two PixtralDeployments of one namespace derive the same name for one kind."""

import itertools

from pixtral_operator.render import desired_children
from pixtral_operator.render import labels as L
from pixtral_operator.settings import OperatorSettings
from pixtral_operator.spec import parse

OWNER = {"apiVersion": "serving.pixtral.dev/v1alpha1", "kind": "PixtralDeployment", "metadata": {"name": "x", "uid": "u"}}


def children_of(name: str) -> set[tuple[str, str]]:
    spec = parse(name, "team", {"canary": {"weight": 10}})
    objs = desired_children(spec, OperatorSettings(monitoring="podmonitor"), OWNER, {"stable": 1, "canary": 1})
    return {(o["kind"], o["metadata"]["name"]) for o in objs}


def test_suffixes_are_hyphen_free_and_distinct_per_kind():
    for kind, suffixes in L.CHILD_SUFFIXES.items():
        assert len(set(suffixes)) == len(suffixes), kind
        assert all(s and "-" not in s for s in suffixes), kind


def test_every_rendered_child_uses_a_listed_suffix():
    for kind, name in children_of("demo"):
        assert name.removeprefix("demo-") in L.CHILD_SUFFIXES[kind], (kind, name)


def test_names_that_extend_each_other_derive_disjoint_children():
    # `demo-stable`'s router Service used to be `demo`'s stable track Service.
    names = ["demo", "demo-stable", "demo-canary", "demo-router", "demo-runtime", "demo-stable-router"]
    for a, b in itertools.combinations(names, 2):
        assert children_of(a).isdisjoint(children_of(b)), (a, b)
