"""Copies of JSON trees: what the Kubernetes API returns and the renderers build (dicts, lists and
scalars, with no shared parts and no cycles), and JSON merge patches applied to them.

`copy.deepcopy` pays for a memo of every object it copied and for dispatch on arbitrary types,
neither of which such a tree needs; the reconcile copies every cached child and every rendered
one on each pass. `bench/bench_operator_pass.py` measures both on a rendered PixtralDeployment's
children (docs/benchmarks.md, "Operator pass")."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

_SCALARS = (str, int, float, bool, type(None))


def copy_tree(value: Any) -> Any:
    """A copy of `value` that shares no dict or list with it; anything that is not a JSON type is
    handed to copy.deepcopy."""
    kind = type(value)
    if kind is dict:
        return {key: copy_tree(item) for key, item in value.items()}
    if kind is list:
        return [copy_tree(item) for item in value]
    if kind in _SCALARS:
        return value
    if kind is tuple:
        return tuple(copy_tree(item) for item in value)
    if isinstance(value, Mapping):
        return {key: copy_tree(item) for key, item in value.items()}
    return copy.deepcopy(value)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: what the API server stores after a JSON merge patch (the operator's status writes).
    A null removes its key, at every depth, so `merge_patch({}, patch)` is `patch` as stored, and a
    comparison with a stored object must go through it: a written `"lastScaleTime": null` is never
    read back."""
    if not isinstance(patch, Mapping):
        return copy_tree(patch)
    merged = {key: copy_tree(item) for key, item in target.items()} if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged
