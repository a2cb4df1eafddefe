"""What the operator would run for a sample PixtralDeployment, turned into a local GPU benchmark.

The runtime pod's settings come from the operator's own renderer (`track_deployment`), so the
benchmark serves exactly the flags a cluster would get; only what a single benchmark machine needs
differs, and each difference is listed in `BENCH_OVERRIDES` and `local_runtime_env`:
- tensorParallelSize forced (1 on one GPU),
- the model folder: the rig's Pixtral-12B-2409-shaped folder instead of the claim at /models/pixtral,
- random weights (`PIXTRAL_LOAD_FORMAT=dummy`),
- loopback instead of the pod IP, and the pod's emptyDir paths (/cache, /tmp) under one local folder.

The router config likewise comes from the operator's `router_config`, with static backends instead
of Service discovery and tenant limits off (one benchmark key), so a load generator measures the
proxy path and not the rate limiter.

    python bench/gpu/serve_config.py [--sample manifests/samples/pixtral-12b-tp2.yaml] [--tp 1]
        [--model /tmp/model] [--root /tmp/pxbench]   # prints the env, the vLLM argv and the router config
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import yaml
from pixtral_operator.render.router import router_config
from pixtral_operator.render.runtime import CACHE_DIR, TMP_DIR, track_deployment
from pixtral_operator.settings import OperatorSettings
from pixtral_operator.spec import PixtralSpec, parse
from pixtral_runtime.supervisor.command import LaunchForm, vllm_command
from pixtral_runtime.supervisor.settings import settings_from

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SAMPLE = ROOT / "manifests" / "samples" / "pixtral-12b-tp2.yaml"
BENCH_API_KEY = "sk-gpu-bench"
BENCH_TENANT = "bench"
# What the operator's `<name>-apikey` Secret holds in a cluster: the key vLLM requires on /v1, which
# only the router sends (and the benchmark's direct path, which stands in for the router).
BENCH_INTERNAL_KEY = "sk-gpu-bench-internal"


def load_spec(sample: Path, tensor_parallel_size: int | None) -> PixtralSpec:
    doc = yaml.safe_load(sample.read_text())
    spec = dict(doc["spec"])
    if tensor_parallel_size is not None:
        spec["engine"] = {**spec.get("engine", {}), "tensorParallelSize": tensor_parallel_size}
    return parse(doc["metadata"]["name"], doc["metadata"].get("namespace", "default"), spec)


def rendered_runtime_env(spec: PixtralSpec) -> list[dict[str, Any]]:
    """The runtime container's env list exactly as the operator renders it (stable track)."""
    stable = next(t for t in spec.tracks() if t.track == "stable")
    deployment = track_deployment(spec, stable, OperatorSettings(), replicas=1)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    if container["command"] != ["pixtral-runtime", "serve"]:
        raise ValueError(f"the runtime container runs {container['command']}, not pixtral-runtime serve")
    return container["env"]


def local_runtime_env(rendered: list[dict[str, Any]], *, model: str, root: str, host: str = "127.0.0.1",
                      vllm_port: int | None = None, health_port: int | None = None,
                      gpu_memory_utilization: float | None = None) -> dict[str, str]:
    """The rendered env as plain variables for one local process. Values from the downward API
    (the pod IP) become `host`; the pod's emptyDir paths move under `root`."""
    env: dict[str, str] = {}
    for item in rendered:
        name = item["name"]
        if "value" in item:
            value = item["value"]
        elif name == "PIXTRAL_HOST":
            value = host
        elif name == "VLLM_API_KEY" and "secretKeyRef" in item.get("valueFrom", {}):
            value = BENCH_INTERNAL_KEY
        else:
            raise ValueError(f"rendered env {name} has no local equivalent: {item}")
        for pod_dir in (CACHE_DIR, TMP_DIR):
            if value == pod_dir or value.startswith(pod_dir + "/"):
                value = root + value
                break
        env[name] = value
    env["PIXTRAL_MODEL"] = model
    env["PIXTRAL_LOAD_FORMAT"] = "dummy"
    if vllm_port is not None:
        env["PIXTRAL_VLLM_PORT"] = str(vllm_port)
    if health_port is not None:
        env["PIXTRAL_HEALTH_PORT"] = str(health_port)
    if gpu_memory_utilization is not None:
        env["PIXTRAL_GPU_MEMORY_UTILIZATION"] = str(gpu_memory_utilization)
    return env


def bench_router_config(spec: PixtralSpec, backends: list[str]) -> dict[str, Any]:
    """The operator's router config with static backends and one benchmark key without limits."""
    config = router_config(spec)
    config.pop("tracks")
    config["backends"] = {"stable": list(backends)}
    config["tenancy"] = {"defaultLimits": {"requestsPerMinute": 0, "maxConcurrent": 0}, "tenants": {}}
    config["apiKeys"] = {BENCH_TENANT: BENCH_API_KEY}
    return config


def vllm_argv(env: dict[str, str]) -> list[str]:
    """The argv the supervisor will start on a GPU image (the `vllm serve` form)."""
    return vllm_command(settings_from([], env), LaunchForm.VLLM_SERVE, sys.executable)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sample", type=Path, default=DEFAULT_SAMPLE)
    ap.add_argument("--tp", type=int, default=1, help="tensorParallelSize to force (default 1)")
    ap.add_argument("--model", default="/tmp/model")
    ap.add_argument("--root", default="/tmp/pxbench", help="local folder for the pod's /cache and /tmp")
    args = ap.parse_args(argv)
    spec = load_spec(args.sample, args.tp)
    env = local_runtime_env(rendered_runtime_env(spec), model=args.model, root=args.root)
    print(json.dumps({
        "sample": str(args.sample),
        "spec_engine": {k: v for k, v in dataclasses.asdict(spec.tracks()[0]).items() if k != "source"},
        "env": env,
        "vllm_argv": vllm_argv(env),
        "router_config": bench_router_config(spec, ["http://127.0.0.1:8000"]),
    }, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
