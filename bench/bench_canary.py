"""Canary analysis benchmark: breach -> weight 0, and the time a full promotion takes with N steps.

    .venv/bin/python bench/bench_canary.py [--interval 5] [--tick 2] [--trials 20]

Runs the operator's own code, canary_loop.CanaryLoop and the reconcile, against the recording fake
API of the unit tests and a Prometheus stand-in behind the real PrometheusClient (an
httpx.MockTransport: the HTTP request and its JSON answer are real, no socket). The stand-in answers
the window queries from a synthetic router: the canary and stable tracks each answer
`--rate` requests per second, and from the breach on, the canary's requests fail with 5xx (or are
`--slowdown` times slower). Time is simulated: the loop ticks every `--tick` seconds
(PIXTRAL_CANARY_SECONDS), so the numbers are what the analysis' rules cost, whatever the machine;
the wall time of one tick (queries, decision, status patch and reconcile) is measured separately.
What it leaves out: Prometheus' scrape interval (1 s on the local cluster, up to one more second of
delay) and the routers' ConfigMap watch (they reload within about a second).

Measured:
- breach -> weight 0 in the router ConfigMap, with maxFailedChecks 1 and 2, error and latency
  breaches starting at evenly spread points within a step;
- full promotion with N steps: canary ready -> Promoting (the stepping), and -> Promoted when the
  new stable is ready `--rollout` seconds later, for N = 1..4.

Results: bench/results/canary.json and the "Canary analysis" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import re
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fakekube import FakeKube, gpu_node, pxd  # noqa: E402
from pixtral_operator.canary_loop import CanaryLoop  # noqa: E402
from pixtral_operator.prometheus import PrometheusClient  # noqa: E402
from pixtral_operator.reconcile import reconcile  # noqa: E402
from pixtral_operator.settings import OperatorSettings  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "canary.json"
DOCS = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- bench_canary:start -->", "<!-- bench_canary:end -->"
SETTINGS = OperatorSettings()


class SyntheticRouter:
    """The router's per-track series as Prometheus would answer the window queries about them."""

    def __init__(self, rate: float, latency: float, slowdown: float) -> None:
        self.rate, self.latency, self.slowdown = rate, latency, slowdown
        self.now = 0.0
        self.breach_at = float("inf")
        self.kind = "errors"

    def answer(self, promql: str) -> float | None:
        window = float(re.search(r"\[(\d+)s\]", promql).group(1))
        canary = 'track="canary"' in promql
        start = self.now - window
        bad = max(0.0, self.now - max(start, self.breach_at)) if canary else 0.0
        if promql.startswith("histogram_quantile"):
            slow = canary and self.kind == "latency" and bad > window / 2  # p95 of the window turns slow
            return self.latency * (self.slowdown if slow else 1.0)
        if 'code=~"5.."' in promql:
            return self.rate * bad if self.kind == "errors" else 0.0
        return self.rate * window

    def transport(self) -> httpx.MockTransport:
        def handle(request: httpx.Request) -> httpx.Response:
            value = self.answer(request.url.params["query"])
            result = [] if value is None else [{"metric": {}, "value": [self.now, repr(value)]}]
            return httpx.Response(200, json={"status": "success", "data": {"resultType": "vector", "result": result}})
        return httpx.MockTransport(handle)


class Bed:
    def __init__(self, analysis: dict, router: SyntheticRouter) -> None:
        self.kube = FakeKube(nodes=[gpu_node("gpu-0")])
        self.body = pxd(spec={"replicas": 1, "canary": {"engine": {"maxNumSeqs": 8}, "analysis": analysis}})
        self.router = router
        client = httpx.AsyncClient(transport=router.transport())
        self.loop = CanaryLoop(self.kube, PrometheusClient("http://prometheus.test", client=client), SETTINGS)
        self.tick_seconds: list[float] = []
        self.reconcile()

    def reconcile(self) -> None:
        self.body["status"] = self.kube.statuses.get(("team", "demo"), {})
        reconcile(self.body, self.kube, SETTINGS, now="t")

    async def tick(self, now: float) -> None:
        self.router.now = now
        self.body["status"] = self.kube.statuses.get(("team", "demo"), {})
        started = time.perf_counter()
        result = await self.loop.tick(self.body, now=now)
        if result.status_patch is not None:
            self.kube.patch_status("team", "demo", result.status_patch)
            if result.rerender:
                self.reconcile()
        self.tick_seconds.append(time.perf_counter() - started)

    def weight(self) -> int:
        cm = self.kube.get("v1", "ConfigMap", "team", "demo-router")
        return json.loads(cm["data"]["config.json"])["canary"]["weight"]

    def phase(self) -> str:
        return (self.kube.statuses.get(("team", "demo"), {}).get("canary") or {}).get("phase", "")

    def ready(self, track: str) -> None:
        self.kube.set_deployment_status("team", f"demo-{track}", replicas=1, readyReplicas=1, updatedReplicas=1)


async def breach_to_zero(args, kind: str, failed_checks: int, offset: float) -> tuple[float, list[float]]:
    """Simulated seconds from the breach to weight 0; the breach starts `offset` into the first step."""
    router = SyntheticRouter(args.rate, 0.2, args.slowdown)
    router.kind = kind
    analysis = {"steps": [10, 50], "intervalSeconds": args.interval, "minRequests": 5,
                "maxFailedChecks": failed_checks}
    bed = Bed(analysis, router)
    bed.ready("stable")
    bed.ready("canary")
    now = 1000.0
    await bed.tick(now)  # Progressing at the first step
    assert bed.phase() == "Progressing" and bed.weight() == 10, bed.phase()
    router.breach_at = now + offset
    deadline = now + 20 * args.interval
    while now < deadline:
        now += args.tick
        await bed.tick(now)
        if bed.weight() == 0:
            return now - router.breach_at, bed.tick_seconds
    raise AssertionError(f"no rollback within {20 * args.interval}s ({kind}, {failed_checks} checks)")


async def promotion(args, steps: int) -> dict:
    router = SyntheticRouter(args.rate, 0.2, args.slowdown)
    analysis = {"steps": [int(100 * (i + 1) / (steps + 1)) for i in range(steps)], "intervalSeconds": args.interval,
                "minRequests": 5}
    bed = Bed(analysis, router)
    bed.ready("stable")
    bed.ready("canary")
    now = 1000.0
    await bed.tick(now)
    ready_at, promoting_at = now, None
    while bed.phase() != "Promoted":
        now += args.tick
        if promoting_at is None and bed.phase() == "Promoting":
            promoting_at = now - args.tick
        if promoting_at is not None and now - promoting_at >= args.rollout:
            bed.ready("stable")  # the new stable pods are ready
        await bed.tick(now)
        assert now - ready_at < 100 * args.interval + args.rollout, "promotion did not finish"
    return {"steps": steps, "weights": analysis["steps"], "stepping_seconds": promoting_at - ready_at,
            "promotion_seconds": now - ready_at, "tick_ms": statistics.median(bed.tick_seconds) * 1000}


async def run(args) -> dict:
    offsets = [args.interval * i / args.trials for i in range(args.trials)]
    breaches = {}
    tick_times: list[float] = []
    for kind in ("errors", "latency"):
        for failed in (1, 2):
            times = []
            for offset in offsets:
                seconds, ticks = await breach_to_zero(args, kind, failed, offset)
                times.append(seconds)
                tick_times += ticks
            breaches[f"{kind}, maxFailedChecks {failed}"] = {"median": statistics.median(times), "max": max(times),
                                                             "min": min(times)}
    promotions = [await promotion(args, n) for n in range(1, 5)]
    return {"interval_seconds": args.interval, "tick_seconds": args.tick, "rollout_seconds": args.rollout,
            "rate": args.rate, "trials": args.trials, "breach_to_weight_0": breaches, "promotions": promotions,
            "tick_wall_ms": {"median": statistics.median(tick_times) * 1000,
                             "p99": sorted(tick_times)[int(len(tick_times) * 0.99)] * 1000}}


def markdown(result: dict, when: str) -> str:
    r = result
    lines = [START, "## Canary analysis", "",
             f"`.venv/bin/python bench/bench_canary.py` ({when}, {platform.machine()}, Python "
             f"{platform.python_version()}): the operator's canary loop and reconcile against the fake API and a "
             f"synthetic router series behind the real Prometheus client; simulated time, loop tick "
             f"{r['tick_seconds']:g} s, intervalSeconds {r['interval_seconds']:g}, {r['trials']} breach start points "
             "spread over a step. Prometheus' scrape interval (1 s locally) and the routers' ConfigMap watch "
             "(about a second) come on top.", "",
             "| breach -> router weight 0 | median | min | max |", "| --- | --- | --- | --- |"]
    for name, t in r["breach_to_weight_0"].items():
        lines.append(f"| {name} | {t['median']:.1f} s | {t['min']:.1f} s | {t['max']:.1f} s |")
    lines += ["", f"Target: at most 2 intervals ({2 * r['interval_seconds']:g} s) and 15 s with a 5 s interval. The "
              "latency breach is seen once the slow requests are more than the quantile's share of the window.", "",
              f"| full promotion | weights | canary ready -> Promoting | -> Promoted (new stable ready "
              f"{r['rollout_seconds']:g} s later) |", "| --- | --- | --- | --- |"]
    for p in r["promotions"]:
        lines.append(f"| {p['steps']} step(s) | {p['weights']} | {p['stepping_seconds']:.0f} s | "
                     f"{p['promotion_seconds']:.0f} s |")
    lines += ["", f"One tick (6 queries, the decision, the status patch and, when the weight changes, a reconcile) "
              f"takes {r['tick_wall_ms']['median']:.1f} ms median, {r['tick_wall_ms']['p99']:.1f} ms p99 of wall time "
              "here. Raw numbers: `bench/results/canary.json`.", END]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--tick", type=float, default=SETTINGS.canary_seconds)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--rate", type=float, default=10.0, help="requests per second per track")
    parser.add_argument("--slowdown", type=float, default=4.0)
    parser.add_argument("--rollout", type=float, default=60.0, help="seconds the new stable takes to be ready")
    args = parser.parse_args()
    if not (args.interval > 0 and args.tick > 0 and args.trials > 0):
        parser.error("--interval, --tick and --trials must be positive")
    result = asyncio.run(run(args))
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"when": when, **result}, indent=2) + "\n")
    text = DOCS.read_text()
    section = markdown(result, when)
    if START in text:
        text = text[: text.index(START)] + section + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    DOCS.write_text(text)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
