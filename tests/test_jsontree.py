"""jsontree.copy_tree: a copy of a JSON tree that shares no dict or list with the original."""

from __future__ import annotations

import copy
from types import MappingProxyType

from pixtral_operator.jsontree import copy_tree


def test_a_copy_equals_the_tree_and_shares_none_of_its_containers():
    tree = {"metadata": {"name": "a", "labels": {"x": "1"}, "managedFields": [{"fieldsV1": {"f:spec": {}}}]},
            "spec": {"replicas": 2, "ports": [{"port": 80, "name": None}], "on": True, "ratio": 0.5}}
    copied = copy_tree(tree)
    assert copied == tree
    copied["metadata"]["labels"]["x"] = "2"
    copied["spec"]["ports"][0]["port"] = 81
    copied["metadata"]["managedFields"][0]["fieldsV1"]["f:spec"]["f:x"] = {}
    assert tree["metadata"]["labels"]["x"] == "1" and tree["spec"]["ports"][0]["port"] == 80
    assert tree["metadata"]["managedFields"][0]["fieldsV1"]["f:spec"] == {}


def test_tuples_stay_tuples_other_mappings_become_dicts_and_anything_else_is_deep_copied():
    class Thing:
        def __init__(self) -> None:
            self.items = [1]

    thing = Thing()
    copied = copy_tree({"t": ({"a": [1]},), "m": MappingProxyType({"k": [2]}), "o": thing})
    assert isinstance(copied["t"], tuple) and copied["t"] == ({"a": [1]},)
    assert type(copied["m"]) is dict and copied["m"] == {"k": [2]}
    assert copied["o"] is not thing and copied["o"].items == [1] and copied["o"].items is not thing.items
    assert copy_tree(copy.deepcopy(copied["t"])) == copied["t"]


def test_merge_patch_follows_rfc_7386_at_every_depth():
    from pixtral_operator.jsontree import merge_patch

    target = {"a": {"b": 1, "c": [1, 2]}, "keep": "x"}
    patch = {"a": {"b": None, "c": [3], "d": {"e": None, "f": 2}}, "new": None}
    assert merge_patch(target, patch) == {"a": {"c": [3], "d": {"f": 2}}, "keep": "x"}
    assert target == {"a": {"b": 1, "c": [1, 2]}, "keep": "x"}  # the target is not changed
    assert merge_patch({}, {"x": {"lastScaleTime": None, "desired": 1}}) == {"x": {"desired": 1}}
    assert merge_patch({"a": 1}, "scalar") == "scalar"
