"""Tables for docs/benchmarks.md from the JSON files a GPU run brought back (bench/gpu/gpu_bench.py).

    python bench/gpu/report.py RESULT.json...   # serve_ab / replicas_ab / replicas files; prints Markdown

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


def ab_pairs(runs: list[dict]) -> list[tuple[dict, dict]]:
    """(direct, router) runs of one repetition: each pair ran back to back, so it shares the
    engine's state and the machine's moment."""
    by_key = {(r["concurrency"], r["rep"], r["path"]): r for r in runs}
    return [(r, by_key[(r["concurrency"], r["rep"], "router")]) for r in runs
            if r["path"] == "direct" and (r["concurrency"], r["rep"], "router") in by_key]


def ab_deltas(pairs: list[tuple[dict, dict]]) -> list[str]:
    """Router minus direct per concurrency over all pairs: mean and range of the per-pair changes."""
    lines = ["| concurrency | pairs | req/s direct (range) | throughput change: mean (range) | TTFT p50 direct (range) | "
             "TTFT p50 change: mean, median (range) | TTFT p99 change: mean |",
             "|---|---|---|---|---|---|---|"]
    for conc in sorted({d["concurrency"] for d, _ in pairs}):
        ps = [(d, t) for d, t in pairs if d["concurrency"] == conc]
        thr = [100 * (t["req_per_s"] - d["req_per_s"]) / d["req_per_s"] for d, t in ps]
        p50 = [t["ttft_p50_ms"] - d["ttft_p50_ms"] for d, t in ps]
        p99 = [t["ttft_p99_ms"] - d["ttft_p99_ms"] for d, t in ps]
        rd = [d["req_per_s"] for d, _ in ps]
        td = [d["ttft_p50_ms"] for d, _ in ps]
        lines.append(
            f"| {conc} | {len(ps)} | {statistics.mean(rd):.2f} ({min(rd):.2f}-{max(rd):.2f}) | "
            f"{statistics.mean(thr):+.1f}% ({min(thr):+.1f}..{max(thr):+.1f}) | "
            f"{statistics.mean(td):.0f} ms ({min(td):.0f}-{max(td):.0f}) | "
            f"{statistics.mean(p50):+.0f}, {statistics.median(p50):+.0f} ms ({min(p50):+.0f}..{max(p50):+.0f}) | "
            f"{statistics.mean(p99):+.0f} ms |")
    return lines


def workload_name(r: dict) -> str:
    if "workload" in r:
        return r["workload"]
    return "unique images" if not r["pool"] else f"repeated: {r['pool']} images"


def replicas_table(runs: list[dict]) -> list[str]:
    lines = ["| workload | strategy | req/s | output tok/s | TTFT p50 | TTFT p99 | engine requests | prefix cache hits | multimodal cache hits |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        eng = r["engines"]
        lines.append(
            f"| {workload_name(r)} | {r.get('strategy', 'leastOutstanding')} | {r['req_per_s']:.2f} | {r['out_tok_per_s']:.0f} | "
            f"{r['ttft_p50_ms']:.0f} ms | {r['ttft_p99_ms']:.0f} ms | "
            + " / ".join(f"{e['requests']:.0f}" for e in eng) + " | "
            + " / ".join(f"{e['prefix_cache_hit_rate']:.0%}" if e["prefix_cache_hit_rate"] is not None else "-" for e in eng) + " | "
            + " / ".join(f"{e['mm_cache_hit_rate']:.0%}" if e["mm_cache_hit_rate"] is not None else "-" for e in eng) + " |")
    return lines


def strategy_deltas(runs: list[dict], baseline: str = "leastOutstanding") -> list[str]:
    """Every other strategy against the baseline on the same workload of the same run."""
    by = {(workload_name(r), r.get("strategy", baseline)): r for r in runs}
    lines = ["| workload | strategy | TTFT p50 change | TTFT p99 change | throughput change |", "|---|---|---|---|---|"]
    for (workload, strategy), r in by.items():
        base = by.get((workload, baseline))
        if strategy == baseline or base is None:
            continue
        lines.append(f"| {workload} | {strategy} vs {baseline} | "
                     f"{100 * (r['ttft_p50_ms'] - base['ttft_p50_ms']) / base['ttft_p50_ms']:+.1f}% | "
                     f"{100 * (r['ttft_p99_ms'] - base['ttft_p99_ms']) / base['ttft_p99_ms']:+.1f}% | "
                     f"{100 * (r['req_per_s'] - base['req_per_s']) / base['req_per_s']:+.1f}% |")
    return lines


def main(paths: list[str]) -> int:
    pairs: list[tuple[dict, dict]] = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        if data.get("mode") == "serve-ab":
            print(f"{path}:", "", "\n".join(ab_table(data.get("runs", []))), "", sep="\n")
            pairs += ab_pairs(data.get("runs", []))
        elif data.get("mode") == "replicas":
            runs = data.get("runs", [])
            print(f"{path}:", "", "\n".join(replicas_table(runs)), "", sep="\n")
            if len({r.get("strategy") for r in runs}) > 1:
                print("\n".join(strategy_deltas(runs)), "", sep="\n")
        else:
            print(f"report.py: {path} is not a gpu_bench result", file=sys.stderr)
            return 2
    if pairs:
        print("all A/B pairs:", "", "\n".join(ab_deltas(pairs)), sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
