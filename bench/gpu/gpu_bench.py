"""The project's runtime on a real GPU: `pixtral-runtime serve` with the operator's settings for a
sample (bench/gpu/serve_config.py), vLLM's CUDA build, random weights of the real architecture.

Modes (each fits one device call of at most 10 minutes; `--deadline` bounds it):
- `serve-ab`: start the supervisor, record its readiness timeline and vLLM's metric names, an
  interleaved A/B of direct vs router (direct, router, direct, router; fresh images every request)
  at each concurrency, then SIGTERM the supervisor under load and record the drain.
- `replicas`: two supervisors on the one GPU (each with a share of its memory) behind one router per
  balancing strategy (`--strategies`); each workload (unique images, repeated images drawn
  uniformly or by Zipf) runs once through each router, back to back, with the prefix and
  multimodal cache hit rates of each engine. `--router-extra` merges JSON into every router config.

Run by bench/gpu/run.sh on the GPU machine (which unpacks the rig and installs this checkout);
results are JSON files under --out, summarised in docs/benchmarks.md ("GPU: one H200").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import load  # noqa: E402
import serve_config  # noqa: E402
from pixtral_runtime.supervisor.drain import QUEUE_GAUGES, requests_in_flight  # noqa: E402

T0 = time.monotonic()
MODEL_NAME = "pixtral-12b"
# vLLM requires the internal key on /v1 (VLLM_API_KEY); calls straight to it carry it as the router does.
DIRECT_AUTH = {"Authorization": f"Bearer {serve_config.BENCH_INTERNAL_KEY}"}
# Metric names the project reads from vLLM (drain, autoscaler, dashboards: docs/operations.md).
PROJECT_METRICS = (*QUEUE_GAUGES, "vllm:kv_cache_usage_perc", "vllm:time_to_first_token_seconds_bucket")
CACHE_COUNTERS = ("vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total",
                  "vllm:mm_cache_queries_total", "vllm:mm_cache_hits_total")
STARTUP_LOG = re.compile(r"Loading weights took|Model loading took|torch.compile take|Graph capturing finished|"
                         r"init engine|GPU KV cache size|Maximum concurrency|Available KV cache memory")


def elapsed() -> float:
    return time.monotonic() - T0


def log(message: str) -> None:
    print(f"[gpu_bench t+{elapsed():.0f}s] {message}", flush=True)


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except (OSError, ValueError):
        return 0, ""


def metric_values(text: str, name: str) -> float | None:
    """The sum of one metric's samples over all label sets, or None when absent."""
    total, seen = 0.0, False
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
            seen = True
    return total if seen else None


def start(argv: list[str], env: dict[str, str], logfile: Path) -> subprocess.Popen:
    # Own session: a signal to the group reaches the process tree, and the device call's stdout is
    # never held by it.
    with open(logfile, "wb") as f:
        return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)


class Supervisor:
    def __init__(self, env: dict[str, str], logfile: Path) -> None:
        self.env = env
        self.logfile = logfile
        self.vllm = f"http://127.0.0.1:{env['PIXTRAL_VLLM_PORT']}"
        self.health = f"http://127.0.0.1:{env['PIXTRAL_HEALTH_PORT']}"
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0

    def start(self) -> None:
        self.started_at = time.monotonic()
        self.proc = start([sys.executable, "-m", "pixtral_runtime.cli", "serve"], self.env, self.logfile)
        log(f"supervisor started (pid {self.proc.pid}), vLLM on {self.vllm}, probes on {self.health}")

    def wait_ready(self, deadline: float) -> dict:
        """Poll the probes and vLLM's /health until /readyz is 200; the timeline of first answers."""
        first: dict[str, float] = {}
        bodies: set[str] = set()
        while elapsed() < deadline:
            if self.proc.poll() is not None:
                return {"ready": False, "exit_code": self.proc.returncode, "first_200_s": first}
            now = time.monotonic() - self.started_at
            for key, url in (("healthz", self.health + "/healthz"), ("vllm_health", self.vllm + "/health"),
                             ("readyz", self.health + "/readyz")):
                status, body = http_get(url, timeout=1.0)
                if status == 200 and key not in first:
                    first[key] = round(now, 2)
                if key == "readyz" and status == 503:
                    bodies.add(body.strip())
            if "readyz" in first:
                return {"ready": True, "first_200_s": first, "readyz_503_bodies": sorted(bodies)}
            time.sleep(0.25)
        return {"ready": False, "first_200_s": first, "readyz_503_bodies": sorted(bodies), "timed_out": True}

    def startup_lines(self) -> list[str]:
        text = self.logfile.read_text(errors="replace")
        lines = [line[:240] for line in text.splitlines() if STARTUP_LOG.search(line)]
        lines += [line[:400] for line in text.splitlines() if line.startswith("[pixtral-runtime serve]")]
        return lines

    def stop(self, timeout: float = 60) -> int | None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode if self.proc else None


def supervisor_env(args: argparse.Namespace, *, vllm_port: int, health_port: int,
                   gpu_memory_utilization: float | None = None) -> dict[str, str]:
    spec = serve_config.load_spec(Path(args.sample), args.tp)
    rendered = serve_config.local_runtime_env(
        # One root for every engine: the second reuses the first one's torch.compile cache.
        serve_config.rendered_runtime_env(spec), model=args.model, root=args.root,
        vllm_port=vllm_port, health_port=health_port, gpu_memory_utilization=gpu_memory_utilization)
    for key in ("HOME", "TMPDIR", "HF_HOME", "VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR"):
        Path(rendered[key]).mkdir(parents=True, exist_ok=True)
    # The machine's own environment (PATH with the `vllm` script, PYTHONPATH, the rig's vLLM switches)
    # under the rendered settings, as the container image's environment lies under the pod's env.
    env = {**os.environ, **rendered, **dict(kv.split("=", 1) for kv in args.set)}
    env.setdefault("CUDA_VISIBLE_DEVICES", "0")  # what the device plugin sets for a 1-GPU pod
    return env


def start_router(args: argparse.Namespace, backends: list[str], port: int, extra: dict) -> tuple[subprocess.Popen, str]:
    spec = serve_config.load_spec(Path(args.sample), args.tp)
    config = {**serve_config.bench_router_config(spec, backends), **extra}
    path = Path(args.root) / f"router-{port}.json"
    path.write_text(json.dumps(config, indent=1))
    key_file = Path(args.root) / "internal-key"  # the mounted `<name>-apikey` Secret in a cluster
    key_file.write_text(serve_config.BENCH_INTERNAL_KEY)
    proc = start([sys.executable, "-m", "pixtral_runtime.cli", "router", "--config", str(path), "--host", "127.0.0.1",
                  "--port", str(port), "--log-level", "warning"],
                 {**os.environ, "PIXTRAL_ROUTER_INTERNAL_KEY_FILE": str(key_file)}, Path(args.out) / f"router-{port}.log")
    base = f"http://127.0.0.1:{port}"
    for _ in range(60):
        time.sleep(0.5)
        if proc.poll() is not None:  # a port in use: whatever answers there is not this router
            break
        if http_get(base + "/readyz")[0] == 200:
            log(f"router ready on {base} -> {backends}")
            return proc, base
    raise RuntimeError(f"router on {base} did not become ready (see router-{port}.log)")


def save(args: argparse.Namespace, name: str, result: dict) -> None:
    Path(args.out, name).write_text(json.dumps(result, indent=1, default=str))


def brief(summary: dict) -> str:
    return (f"c{summary['concurrency']} n{summary['requests']} ok {summary['ok']} {summary['req_per_s']} req/s "
            f"{summary['out_tok_per_s']} tok/s TTFT p50 {summary['ttft_p50_ms']} ms p99 {summary['ttft_p99_ms']} ms")


async def ab_runs(args: argparse.Namespace, direct: str, router: str, result: dict, outfile: str = "serve_ab.json") -> None:
    auth = {"Authorization": f"Bearer {serve_config.BENCH_API_KEY}"}
    async with load.client_session() as s:
        result["warmup"] = {"direct": await load.warm_up(s, direct, model=MODEL_NAME, headers=DIRECT_AUTH),
                            "router": await load.warm_up(s, router, model=MODEL_NAME, headers=auth)}
        log(f"warm-up statuses {result['warmup']}")
        result["runs"] = []
        for conc, n in zip(args.conc, args.requests, strict=True):
            for rep in range(args.reps):
                for path, base, headers in (("direct", direct, DIRECT_AUTH), ("router", router, auth)):
                    # Each run needs about n / 15 req/s plus the tail; skip what cannot finish in time.
                    reserve = args.drain_reserve if args.mode == "serve-ab" else args.replica_reserve
                    if elapsed() + n / 12 + 15 > args.deadline - reserve:
                        log(f"skipping {path} c{conc} rep {rep}: not enough time left")
                        continue
                    w = load.Workload(concurrency=conc, requests=n, tag=f"ab {path} c{conc} r{rep}")
                    summary = await load.closed_loop(s, base, w, model=MODEL_NAME, headers=headers,
                                                     seed=rep * 1000 + conc)
                    summary.update(path=path, rep=rep, finished_at_s=round(elapsed(), 1))
                    result["runs"].append(summary)
                    log(f"{path}: {brief(summary)}")
                    save(args, outfile, result)


async def drain_under_load(args: argparse.Namespace, sup: Supervisor) -> dict:
    """Load above max-num-seqs, SIGTERM the supervisor, and watch readiness, requests and the exit."""
    out: dict = {"concurrency": args.drain_conc, "max_tokens": args.drain_tokens}
    async with load.client_session() as s:
        bodies = [load.chat_body(MODEL_NAME, f"[drain {i}] Describe this image.", [load.image_url(512)],
                                 args.drain_tokens) for i in range(args.drain_conc)]
        tasks = [asyncio.create_task(load.one(s, sup.vllm, b, DIRECT_AUTH)) for b in bodies]
        t_load = time.monotonic()
        in_flight = None
        for _ in range(40):  # until vLLM's scheduler holds the requests (at most 10 s)
            await asyncio.sleep(0.25)
            status, text = await asyncio.to_thread(http_get, sup.vllm + "/metrics")
            in_flight = requests_in_flight(text) if status == 200 else None
            if in_flight and in_flight >= args.drain_conc // 2:
                break
        out["in_flight_at_sigterm"] = in_flight
        out["load_to_sigterm_s"] = round(time.monotonic() - t_load, 2)
        t_term = time.perf_counter()
        sup.proc.send_signal(signal.SIGTERM)
        readyz_503_after = None
        late: list[asyncio.Task] = []
        while sup.proc.poll() is None and time.perf_counter() - t_term < args.drain_timeout:
            status, _ = await asyncio.to_thread(http_get, sup.health + "/readyz", 1.0)
            if status != 200 and readyz_503_after is None:
                readyz_503_after = round(time.perf_counter() - t_term, 3)
            if not late and time.perf_counter() - t_term > 1.0:
                # A request that arrives while Kubernetes is still removing the endpoint.
                late = [asyncio.create_task(load.one(s, sup.vllm, load.chat_body(
                    MODEL_NAME, f"[late {i}] Describe.", [load.image_url(512)], 32), DIRECT_AUTH)) for i in range(4)]
            await asyncio.sleep(0.1)
        t_exit = time.perf_counter()
        results = await asyncio.gather(*tasks, *late, return_exceptions=True)
    done = [r for r in results if isinstance(r, dict)]
    out.update(
        readyz_not_200_after_sigterm_s=readyz_503_after,
        sigterm_to_exit_s=round(t_exit - t_term, 2),
        exit_code=sup.proc.poll(),
        statuses={str(k): sum(1 for r in done if r["status"] == k) for k in {r["status"] for r in done}},
        exceptions=[repr(r)[:200] for r in results if not isinstance(r, dict)][:3],
        late_requests=len(late),
        all_ok=all(r["status"] == 200 for r in done) and len(done) == len(results),
        last_request_done_after_sigterm_s=round(max(r["end"] for r in done) - t_term, 2) if done else None,
        supervisor_lines=[line for line in sup.startup_lines() if "drain" in line or "SIGTERM" in line or "stopped" in line],
    )
    return out


def serve_ab(args: argparse.Namespace) -> int:
    result: dict = {"mode": "serve-ab", "args": vars(args)}
    env = supervisor_env(args, vllm_port=8000, health_port=8081)
    result["supervisor_env"] = {k: v for k, v in env.items() if k.startswith(("PIXTRAL_", "VLLM_", "CUDA_"))}
    result["overrides"] = args.set
    sup = Supervisor(env, Path(args.out) / "supervisor.log")
    sup.start()
    result["readiness"] = sup.wait_ready(args.deadline - 60)
    result["startup_log"] = sup.startup_lines()
    save(args, "serve_ab.json", result)
    log(f"readiness {result['readiness']}")
    if not result["readiness"]["ready"]:
        sup.stop()
        return 1
    status, text = http_get(sup.vllm + "/metrics")
    result["metrics"] = {
        "status": status,
        "project_metrics_present": {m: (m + "{" in text or m + " " in text) for m in PROJECT_METRICS},
        "in_flight_idle": requests_in_flight(text),
        "vllm_metric_names": sorted({line.split("{")[0].split(" ")[0] for line in text.splitlines()
                                     if line.startswith("vllm:")}),
    }
    log(f"metrics {result['metrics']['project_metrics_present']} idle in-flight {result['metrics']['in_flight_idle']}")
    router_proc, router = start_router(args, [sup.vllm], 8080, {})
    try:
        asyncio.run(ab_runs(args, sup.vllm, router, result))
    finally:
        router_proc.terminate()
        router_proc.wait(10)
    result["drain"] = asyncio.run(drain_under_load(args, sup))
    log(f"drain {result['drain']}")
    if sup.proc.poll() is None:
        result["drain"]["note"] = "supervisor still running at the drain timeout; stopped"
        sup.stop()
    save(args, "serve_ab.json", result)
    return 0


async def replica_runs(args: argparse.Namespace, routers: dict[str, str], engines: list[Supervisor], result: dict) -> None:
    """Each workload once per strategy, back to back, the strategies' order alternating between
    workloads; every run draws fresh images, so no strategy inherits another's cache."""
    auth = {"Authorization": f"Bearer {serve_config.BENCH_API_KEY}"}
    async with load.client_session() as s:
        result["warmup"] = {name: await load.warm_up(s, base, model=MODEL_NAME, headers=auth)
                            for name, base in routers.items()}
        result["runs"] = []
        order = list(routers)
        for index, spec in enumerate(args.pools):
            pool, zipf = load.parse_pool(spec)
            for strategy in (order if index % 2 == 0 else order[::-1]):
                if elapsed() + args.replica_requests / (args.rate or 12) + 20 > args.deadline:
                    log(f"skipping pool={spec} {strategy}: not enough time left")
                    continue
                before = [http_get(e.vllm + "/metrics")[1] for e in engines]
                w = load.Workload(concurrency=args.replica_conc, requests=args.replica_requests, pool=pool, zipf=zipf,
                                  tag=f"replicas {strategy} pool{spec}")
                seed = index * 100 + order.index(strategy)
                if args.rate:
                    summary = await load.open_loop(s, routers[strategy], w, model=MODEL_NAME, headers=auth,
                                                   rate=args.rate, seed=seed)
                else:
                    summary = await load.closed_loop(s, routers[strategy], w, model=MODEL_NAME, headers=auth, seed=seed)
                after = [http_get(e.vllm + "/metrics")[1] for e in engines]
                summary.update(strategy=strategy, engines=engine_deltas(before, after), finished_at_s=round(elapsed(), 1))
                result["runs"].append(summary)
                log(f"{strategy} pool {spec}: {brief(summary)} engines {summary['engines']}")
                save(args, "replicas.json", result)


def engine_deltas(before: list[str], after: list[str]) -> list[dict]:
    """Requests and cache hit rates of each engine over one run, from vLLM's counters."""
    per_engine = []
    for b, a in zip(before, after, strict=True):
        d = {name: (metric_values(a, name) or 0) - (metric_values(b, name) or 0) for name in CACHE_COUNTERS}
        per_engine.append({
            "requests": (metric_values(a, "vllm:request_success_total") or 0)
            - (metric_values(b, "vllm:request_success_total") or 0),
            "prefix_cache_hit_rate": round(d["vllm:prefix_cache_hits_total"] / d["vllm:prefix_cache_queries_total"], 3)
            if d["vllm:prefix_cache_queries_total"] else None,
            "mm_cache_hit_rate": round(d["vllm:mm_cache_hits_total"] / d["vllm:mm_cache_queries_total"], 3)
            if d["vllm:mm_cache_queries_total"] else None,
        })
    return per_engine


def replicas(args: argparse.Namespace) -> int:
    result: dict = {"mode": "replicas", "args": vars(args)}
    engines = [Supervisor(supervisor_env(args, vllm_port=8000 + i, health_port=8081 + i * 10,
                                         gpu_memory_utilization=args.replica_gpu_memory),
                          Path(args.out) / f"supervisor-{i}.log") for i in range(2)]
    result["readiness"] = []
    routers: list[subprocess.Popen] = []
    try:
        # One after the other: vLLM sizes its KV cache from the memory it sees while profiling.
        for i, e in enumerate(engines):
            e.start()
            ready = e.wait_ready(args.deadline - 90)
            result["readiness"].append(ready)
            log(f"engine {e.vllm}: {ready}")
            if not ready["ready"]:
                return 1
            if i == 0 and args.ab_first:
                # More direct/router pairs on the first engine alone, before the second one starts.
                ab = {"mode": "serve-ab", "engine_gpu_memory_utilization": args.replica_gpu_memory}
                result["ab_first"] = ab
                router_proc, router = start_router(args, [e.vllm], 8079, {})
                try:
                    asyncio.run(ab_runs(args, e.vllm, router, ab, outfile="replicas_ab.json"))
                finally:
                    router_proc.terminate()
                    router_proc.wait(10)
        result["startup_log"] = [e.startup_lines() for e in engines]
        save(args, "replicas.json", result)
        extra = json.loads(args.router_extra)
        result["router_extra"] = extra
        # One router per strategy in front of the same two engines: the strategies share the
        # engines, the GPU and the moment, which is what makes the comparison side by side.
        bases: dict[str, str] = {}
        for i, strategy in enumerate(args.strategies):
            routing = {**extra.get("routing", {}), "strategy": strategy}
            # 8180 and up: 8081, 8091 are the supervisors' probe ports.
            proc, bases[strategy] = start_router(args, [e.vllm for e in engines], 8180 + i, {**extra, "routing": routing})
            routers.append(proc)
        asyncio.run(replica_runs(args, bases, engines, result))
    finally:
        for proc in routers:
            proc.terminate()
            proc.wait(10)
        result["exit_codes"] = [e.stop(timeout=40) for e in engines]
        save(args, "replicas.json", result)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=["serve-ab", "replicas"])
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/out"))
    ap.add_argument("--sample", default=str(serve_config.DEFAULT_SAMPLE))
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--model", default="/tmp/model")
    ap.add_argument("--root", default="/tmp/pxbench")
    ap.add_argument("--deadline", type=float, default=540, help="seconds after start by which to be done")
    ap.add_argument("--conc", type=lambda s: [int(x) for x in s.split(",")], default=[32, 128])
    ap.add_argument("--requests", type=lambda s: [int(x) for x in s.split(",")], default=[192, 384])
    ap.add_argument("--reps", type=int, default=2, help="direct/router pairs per concurrency")
    ap.add_argument("--drain-conc", type=int, default=96)
    ap.add_argument("--drain-tokens", type=int, default=256)
    ap.add_argument("--drain-timeout", type=float, default=90)
    ap.add_argument("--drain-reserve", type=float, default=75, help="seconds kept for the drain test")
    ap.add_argument("--ab-first", action="store_true",
                    help="replicas: run the direct/router A/B (--conc, --requests, --reps) on the first engine first")
    ap.add_argument("--replica-gpu-memory", type=float, default=0.45)
    ap.add_argument("--replica-conc", type=int, default=64)
    ap.add_argument("--replica-requests", type=int, default=384)
    ap.add_argument("--replica-reserve", type=float, default=200,
                    help="seconds an --ab-first A/B leaves for the second engine's start and the replica runs")
    ap.add_argument("--pools", type=lambda s: s.split(","), default=["0", "z20", "128"],
                    help="workloads: 0 = unique images, N = drawn uniformly from N images, zN = a Zipf draw over N")
    ap.add_argument("--rate", type=float, default=0.0,
                    help="replicas mode: Poisson arrivals at this many requests/s instead of the closed loop")
    ap.add_argument("--strategies", type=lambda s: s.split(","), default=["leastOutstanding", "imageAffinity"],
                    help="router balancing strategies, one router each, compared run by run")
    ap.add_argument("--router-extra", default="{}", help="JSON merged into the router config")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="override one rendered supervisor variable (a dry run on vLLM's CPU build, say)")
    args = ap.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.root).mkdir(parents=True, exist_ok=True)
    return serve_ab(args) if args.mode == "serve-ab" else replicas(args)


if __name__ == "__main__":
    sys.exit(main())
