"""Local cluster benchmark: warm start, idempotent start, pod start latency, stop.

    .venv/bin/python bench/bench_cluster.py [--rounds 2] [--pods 3]

The machine holds one local cluster, so this one needs the slot: it refuses while a cluster runs
(`make cluster-down` first) and uses a state directory of its own. The binaries must be built
(`make binaries`) and the slim router image is built once before the first round: "warm" means
built binaries and images, nothing running. Per round it measures:
- up: `localcluster.up()` from nothing to every component ready, node Ready and CoreDNS
  Available (target: under 60 s);
- up again: the idempotent call on the running cluster;
- pod ready: pod created -> Ready on the real node (containerd, CNI, probes by the kubelet), for
  pods running `python3 -m http.server` from the slim router image with a 1 s readiness probe,
  created one after another;
- down: every pod and process stopped, the host restored, the state removed.

Results: bench/results/cluster.json and the "Local cluster" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "e2e"))

import localcluster  # noqa: E402
import localcluster.images  # noqa: E402
from localcluster import wait_for  # noqa: E402

SECTION = "## Local cluster"
UP_TARGET_SECONDS = 60.0


def pod_manifest(name: str, image: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": {
        "terminationGracePeriodSeconds": 5,
        "containers": [{
            "name": "web", "image": image, "command": ["python3", "-m", "http.server", "8080"], "workingDir": "/tmp",
            "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
        }]}}


def pod_ready(client: localcluster.KubeClient, name: str) -> bool:
    pod = client.get(f"/api/v1/namespaces/default/pods/{name}")
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))


def one_round(index: int, pods: int, paths: localcluster.ClusterPaths) -> dict:
    nodes = localcluster.NodePool()
    quiet = lambda line: None  # noqa: E731
    started = time.monotonic()
    info = localcluster.up(paths, nodes=nodes, owner="bench", say=quiet)
    up_seconds = time.monotonic() - started
    try:
        started = time.monotonic()
        localcluster.up(paths, nodes=nodes, owner="bench", say=quiet)
        again_seconds = time.monotonic() - started
        image = localcluster.images.ensure_images(str(info.containerd_socket), runtime=False, say=quiet)["router"]
        client = info.client()
        ready_seconds = []
        for number in range(pods):
            name = f"web-{number}"
            started = time.monotonic()
            client.create("/api/v1/namespaces/default/pods", pod_manifest(name, image))
            wait_for(lambda name=name: pod_ready(client, name), 60, f"pod {name} Ready")
            ready_seconds.append(time.monotonic() - started)
        client.close()
    finally:
        started = time.monotonic()
        localcluster.down(paths, say=quiet)
        down_seconds = time.monotonic() - started
    result = {"round": index, "up_seconds": round(up_seconds, 2), "up_again_seconds": round(again_seconds, 3),
              "pod_ready_seconds": [round(s, 2) for s in ready_seconds], "down_seconds": round(down_seconds, 2)}
    print(json.dumps(result), flush=True)
    return result


def markdown(report: dict) -> str:
    rows = "\n".join(
        f"| {r['round']} | {r['up_seconds']:.1f} | {r['up_again_seconds']:.2f} | "
        f"{', '.join(f'{s:.1f}' for s in r['pod_ready_seconds'])} | {r['down_seconds']:.1f} |"
        for r in report["rounds"])
    return f"""{SECTION}

`bench/bench_cluster.py` ({report['date']}, {report['machine']}, load average at start
{report['load_average']}): the machine's one cluster (control plane, a real node with containerd,
kube-proxy, kube-router, CoreDNS), started with built binaries and images and nothing running
("warm"), {report['pods']} pods running `python3 -m http.server` from the slim router image with a
1 s readiness probe; "up" counts until the node is Ready and CoreDNS Available.
Target: warm `up` under {UP_TARGET_SECONDS:.0f} s; worst measured {report['up_worst_seconds']:.1f} s
({'met' if report['up_target_met'] else 'NOT met'}).

| round | up (s) | up again (s) | pod created -> Ready (s) | down (s) |
|---|---|---|---|---|
{rows}
"""


def write_section(path: Path, section: str) -> None:
    """Replaces this benchmark's section of docs/benchmarks.md, keeping every other section."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == SECTION), None)
    if start is None:
        new_text = text.rstrip("\n") + "\n\n" + section
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        new_text = "".join(lines[:start]) + section + ("\n" if end < len(lines) else "") + "".join(lines[end:])
    path.write_text(new_text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--pods", type=int, default=3)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.pods < 0:
        parser.error("--rounds must be >= 1 and --pods >= 0")
    default = localcluster.ClusterPaths.default()
    if localcluster.running_info(default) is not None:
        parser.error(f"a local cluster runs from {default.state_dir}: the machine holds one; `make cluster-down` first")
    paths = localcluster.ClusterPaths(Path(tempfile.mkdtemp(prefix="pixtral-bench-cluster-")))
    load = os.getloadavg()
    rounds = [one_round(i + 1, args.pods, paths) for i in range(args.rounds)]
    worst = max(r["up_seconds"] for r in rounds)
    report = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}",
        "load_average": " / ".join(f"{x:.1f}" for x in load), "pods": args.pods, "rounds": rounds,
        "up_worst_seconds": worst, "up_target_met": worst < UP_TARGET_SECONDS,
        "up_median_seconds": statistics.median(r["up_seconds"] for r in rounds),
    }
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results" / "cluster.json").write_text(json.dumps(report, indent=2) + "\n")
    write_section(ROOT / "docs" / "benchmarks.md", markdown(report))
    print(markdown(report))
    return 0 if report["up_target_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
