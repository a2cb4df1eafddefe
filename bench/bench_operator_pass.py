"""The cost of one reconcile pass over the watch-fed cache, and of the tree copies in it.

    .venv/bin/python bench/bench_operator_pass.py [--passes 200]

In process, against the unit tests' fake API (tests/fakekube.py), for one PixtralDeployment with
autoscaling (scaled to zero, as bench_scale.py creates 200 of them) whose cached children carry
managedFields of the size the API server writes: CPU time of a pass that finds nothing to change,
and of copying every child once with copy.deepcopy against jsontree.copy_tree, side by side.
Results: the "Operator pass" section of docs/benchmarks.md (written by hand from the output)."""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fakekube import FakeKube, gpu_node, pxd  # noqa: E402
from pixtral_operator import cache as cache_module  # noqa: E402
from pixtral_operator import children as children_module  # noqa: E402
from pixtral_operator import render as render_module  # noqa: E402
from pixtral_operator.cache import CachedKube, ObjectCache  # noqa: E402
from pixtral_operator.jsontree import copy_tree  # noqa: E402
from pixtral_operator.reconcile import reconcile  # noqa: E402
from pixtral_operator.settings import OperatorSettings  # noqa: E402

# The modules that copy trees on the reconcile's path; the "before" rows put copy.deepcopy back in them.
COPYING_MODULES = (cache_module, children_module, render_module)

SPEC = {"replicas": 0, "autoscaling": {"enabled": True, "minReplicas": 0, "maxReplicas": 1}}


def managed_fields(obj: dict) -> list[dict]:
    """One Apply entry naming every field of the object, as server-side apply records it."""
    def fields(value):
        if isinstance(value, dict):
            return {f"f:{k}": fields(v) for k, v in value.items()}
        return {}
    return [{"manager": "pixtral-operator", "operation": "Apply", "apiVersion": obj.get("apiVersion"),
             "fieldsType": "FieldsV1", "fieldsV1": fields({k: v for k, v in obj.items() if k != "status"})}]


def cpu(fn, repeat: int) -> float:
    started = time.process_time()
    for _ in range(repeat):
        fn()
    return (time.process_time() - started) / repeat


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passes", type=int, default=200)
    args = parser.parse_args()
    settings = OperatorSettings()
    api = FakeKube(nodes=[gpu_node("gpu-0")])
    cache = ObjectCache()
    cache.nodes_watched = True
    cache.put_node(gpu_node("gpu-0"))
    kube = CachedKube(api, cache)
    body = pxd(spec=SPEC)
    cache.put(body)
    reconcile(body, kube, settings, now="t0")
    children = [obj for key, obj in cache._objects.items() if key[0] != "PixtralDeployment"]
    for obj in children:
        obj.setdefault("metadata", {})["managedFields"] = managed_fields(obj)
    settled = {**body, "status": api.statuses.get(("team", "demo"), {})}
    assert all(copy_tree(obj) == obj for obj in children)

    def one_pass() -> None:
        reconcile(settled, kube, settings, now="t0")

    # Alternating, so that a change in the machine's load falls on both alike.
    passes = {"copy.deepcopy": [], "jsontree.copy_tree": []}
    copies = {"copy.deepcopy": [], "jsontree.copy_tree": []}
    for _ in range(5):
        for name, fn in (("copy.deepcopy", copy.deepcopy), ("jsontree.copy_tree", copy_tree)):
            for module in COPYING_MODULES:
                module.copy_tree = fn
            passes[name].append(cpu(one_pass, args.passes // 5))
            copies[name].append(cpu(lambda fn=fn: [fn(obj) for obj in children], args.passes // 5))
    for module in COPYING_MODULES:
        module.copy_tree = copy_tree
    print(f"{len(children)} children, each with managedFields; best of 5 rounds of {args.passes // 5}:")
    for name in passes:
        print(f"  {name:18}  a pass that changes nothing {min(passes[name]) * 1000:.2f} ms CPU; "
              f"copying every child once {min(copies[name]) * 1000:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
