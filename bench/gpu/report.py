"""Tables for docs/benchmarks.md from the JSON files a GPU run brought back (bench/gpu/gpu_bench.py).

    python bench/gpu/report.py serve_ab.json [replicas.json]   # prints Markdown

Pure formatting: the figures are the run's own, the A/B deltas are computed from them.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def ab_table(runs: list[dict]) -> list[str]:
    lines = ["| concurrency | path | rep | requests ok | req/s | output tok/s | TTFT p50 | TTFT p99 | e2e p50 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['concurrency']} | {r['path']} | {r['rep'] + 1} | {r['ok']}/{r['requests']} | {r['req_per_s']:.2f} | "
                     f"{r['out_tok_per_s']:.0f} | {r['ttft_p50_ms']:.0f} ms | {r['ttft_p99_ms']:.0f} ms | {r['e2e_p50_ms']:.0f} ms |")
    return lines


def ab_deltas(runs: list[dict]) -> list[str]:
    """Router minus direct per concurrency, from the means over the interleaved repetitions."""
    lines = ["| concurrency | req/s direct / router | throughput change | TTFT p50 direct / router | TTFT p50 change | TTFT p99 direct / router |",
             "|---|---|---|---|---|---|"]
    for conc in sorted({r["concurrency"] for r in runs}):
        d = [r for r in runs if r["concurrency"] == conc and r["path"] == "direct"]
        t = [r for r in runs if r["concurrency"] == conc and r["path"] == "router"]
        if not d or not t:
            continue
        rd, rt = (statistics.mean(x["req_per_s"] for x in g) for g in (d, t))
        pd, pt = (statistics.mean(x["ttft_p50_ms"] for x in g) for g in (d, t))
        qd, qt = (statistics.mean(x["ttft_p99_ms"] for x in g) for g in (d, t))
        lines.append(f"| {conc} | {rd:.2f} / {rt:.2f} | {100 * (rt - rd) / rd:+.1f}% | {pd:.0f} / {pt:.0f} ms | "
                     f"{pt - pd:+.0f} ms | {qd:.0f} / {qt:.0f} ms |")
    return lines


def replicas_table(runs: list[dict]) -> list[str]:
    lines = ["| workload | req/s | output tok/s | TTFT p50 | TTFT p99 | engine requests | prefix cache hits | multimodal cache hits |",
             "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        name = "unique images" if not r["pool"] else f"repeated: {r['pool']} images"
        eng = r["engines"]
        lines.append(
            f"| {name} | {r['req_per_s']:.2f} | {r['out_tok_per_s']:.0f} | {r['ttft_p50_ms']:.0f} ms | {r['ttft_p99_ms']:.0f} ms | "
            + " / ".join(f"{e['requests']:.0f}" for e in eng) + " | "
            + " / ".join(f"{e['prefix_cache_hit_rate']:.0%}" if e["prefix_cache_hit_rate"] is not None else "-" for e in eng) + " | "
            + " / ".join(f"{e['mm_cache_hit_rate']:.0%}" if e["mm_cache_hit_rate"] is not None else "-" for e in eng) + " |")
    return lines


def main(paths: list[str]) -> int:
    for path in paths:
        data = json.loads(Path(path).read_text())
        if data.get("mode") == "serve-ab":
            print("\n".join(ab_table(data.get("runs", []))), "\n", "\n".join(ab_deltas(data.get("runs", []))), sep="\n")
        elif data.get("mode") == "replicas":
            print("\n".join(replicas_table(data.get("runs", []))))
        else:
            print(f"report.py: {path} is not a gpu_bench result", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
