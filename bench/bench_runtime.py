"""Supervisor overhead: plain vLLM vs vLLM under `pixtral-runtime serve`, same flags, same tiny model.

Measures, for each mode, with the real vLLM CPU engine and a tiny random-weight Pixtral:
- startup: process start -> vLLM `/health` 200 (plain) or supervisor `/readyz` 200 (supervised);
- request latency: N sequential text and image chat completions sent straight to vLLM's port
  (the supervisor is not in the data path, so both modes should match within noise);
- shutdown (supervised only): SIGTERM -> exit 0 with the drain check.

Results: bench/results/runtime.json and the "Runtime supervisor" section of docs/benchmarks.md.

    .venv/bin/python bench/bench_runtime.py [--requests 30] [--rounds 1]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
from docsection import replace_section
from PIL import Image
from pixtral_runtime.supervisor.command import LaunchForm, vllm_command
from pixtral_runtime.supervisor.settings import RuntimeSettings
from pixtral_runtime.tiny_model import write_tiny_model

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "runtime.json"
DOCS = ROOT / "docs" / "benchmarks.md"
SECTION_START, SECTION_END = "<!-- bench_runtime:start -->", "<!-- bench_runtime:end -->"
SERVED_NAME = "tiny-pixtral"
START_TIMEOUT_SECONDS = 600
EXTRA_ARGS = ("--dtype", "bfloat16", "--enforce-eager")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def engine_env(cache: Path) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CACHE_ROOT": str(cache / "vllm"),
            "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"), "VLLM_CPU_KVCACHE_SPACE": "1",
            "PYTHONUNBUFFERED": "1"}


def wait_for_200(url: str, process: subprocess.Popen, started: float) -> float:
    deadline = started + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before {url} answered 200")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return time.monotonic() - started
        time.sleep(0.1)
    raise RuntimeError(f"{url} not 200 within {START_TIMEOUT_SECONDS}s")


def png_data_url() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (128, 96), (30, 120, 200)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def measure_requests(base_url: str, count: int) -> dict[str, list[float]]:
    image = png_data_url()
    bodies = {
        "text": [{"role": "user", "content": "Say something short."}],
        "image": [{"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                               {"type": "image_url", "image_url": {"url": image}}]}],
    }
    latencies: dict[str, list[float]] = {kind: [] for kind in bodies}
    with httpx.Client(base_url=base_url, timeout=120) as client:
        for messages in bodies.values():  # one warm-up each, not recorded
            client.post("/v1/chat/completions", json={"model": SERVED_NAME, "messages": messages, "max_tokens": 8})
        for index in range(count):
            for kind, messages in bodies.items():
                body = {"model": SERVED_NAME, "messages": messages, "max_tokens": 8, "min_tokens": 8,
                        "ignore_eos": True, "seed": index}
                began = time.perf_counter()
                response = client.post("/v1/chat/completions", json=body)
                elapsed = time.perf_counter() - began
                response.raise_for_status()
                latencies[kind].append(elapsed)
    return latencies


def stop(process: subprocess.Popen, group: bool) -> float:
    began = time.monotonic()
    if process.poll() is None:
        if group:
            os.killpg(process.pid, signal.SIGTERM)
        else:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # leftover engine processes of this run only
    return time.monotonic() - began


def run_plain(settings: RuntimeSettings, cache: Path, requests: int, log: Path) -> dict:
    command = vllm_command(settings, LaunchForm.API_SERVER_MODULE, sys.executable)
    with open(log, "wb") as sink:
        started = time.monotonic()
        process = subprocess.Popen(command, env=engine_env(cache), stdout=sink, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        startup = wait_for_200(f"http://127.0.0.1:{settings.vllm_port}/health", process, started)
        latencies = measure_requests(f"http://127.0.0.1:{settings.vllm_port}", requests)
    finally:
        shutdown = stop(process, group=True)
    return {"startup_seconds": startup, "latency_seconds": latencies, "shutdown_seconds": shutdown}


def run_supervised(settings: RuntimeSettings, cache: Path, requests: int, log: Path) -> dict:
    flags = ["--model", settings.model, "--served-model-name", SERVED_NAME, "--images-per-prompt", "2",
             "--max-model-len", str(settings.max_model_len), "--max-num-seqs", str(settings.max_num_seqs),
             "--host", "127.0.0.1", "--port", str(settings.vllm_port), "--health-port", str(settings.health_port),
             "--extra-args", json.dumps(list(EXTRA_ARGS)), "--drain-timeout", "60"]
    with open(log, "wb") as sink:
        started = time.monotonic()
        process = subprocess.Popen([str(Path(sys.executable).with_name("pixtral-runtime")), "serve", *flags],
                                   env=engine_env(cache), stdout=sink, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        startup = wait_for_200(f"http://127.0.0.1:{settings.health_port}/readyz", process, started)
        latencies = measure_requests(f"http://127.0.0.1:{settings.vllm_port}", requests)
    finally:
        shutdown = stop(process, group=False)
    return {"startup_seconds": startup, "latency_seconds": latencies, "shutdown_seconds": shutdown,
            "exit_code": process.returncode}


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"n": len(ordered), "mean_ms": 1000 * statistics.fmean(ordered),
            "p50_ms": 1000 * statistics.median(ordered),
            "p95_ms": 1000 * ordered[max(0, round(0.95 * len(ordered)) - 1)]}


def delta_ms(pair: dict, kind: str) -> float:
    return 1000 * (statistics.fmean(pair["supervised"]["latency_seconds"][kind])
                   - statistics.fmean(pair["plain"]["latency_seconds"][kind]))


def markdown(result: dict) -> str:
    rows = ["| measure | plain vLLM | under `pixtral-runtime serve` |", "|---|---|---|"]
    for round_index, pair in enumerate(result["rounds"], start=1):
        plain, supervised = pair["plain"], pair["supervised"]
        rows.append(f"| round {round_index}: startup to ready (s) | {plain['startup_seconds']:.1f} (`/health` 200) | "
                    f"{supervised['startup_seconds']:.1f} (`/readyz` 200) |")
        for kind in ("text", "image"):
            p, s = summary(plain["latency_seconds"][kind]), summary(supervised["latency_seconds"][kind])
            rows.append(f"| round {round_index}: {kind} request, mean / p50 / p95 (ms, n={p['n']}) | "
                        f"{p['mean_ms']:.0f} / {p['p50_ms']:.0f} / {p['p95_ms']:.0f} | "
                        f"{s['mean_ms']:.0f} / {s['p50_ms']:.0f} / {s['p95_ms']:.0f} |")
        rows.append(f"| round {round_index}: SIGTERM to exit (s) | {plain['shutdown_seconds']:.1f} | "
                    f"{supervised['shutdown_seconds']:.1f} (drain check, exit code {supervised['exit_code']}) |")
    machine = result["machine"]
    return "\n".join([
        SECTION_START,
        "## Runtime supervisor",
        "",
        "What the supervisor costs compared with starting vLLM by hand with the same flags "
        "(real vLLM CPU build, tiny random-weight Pixtral from `pixtral-runtime tiny-model`, TP=1, "
        "`--max-num-seqs 4`, `VLLM_CPU_KVCACHE_SPACE=1`, `--dtype bfloat16 --enforce-eager`). Requests go "
        "straight to vLLM's port in both modes, sequentially, `max_tokens=min_tokens=8`; the image is a "
        "128x96 PNG data URL. Startup counts from process start to the readiness signal a Kubernetes "
        "probe would use.",
        "",
        f"Command: `{result['command']}`  ",
        f"Run: {result['finished_at']}, {machine['cpus']} CPUs, {machine['memory_gib']} GiB, "
        f"{machine['platform']}, Python {machine['python']} (the machine is shared with other builds and vLLM "
        "runs, so absolute numbers are noisy).",
        "",
        *rows,
        "",
        "Measured differences (supervised minus plain, per round): "
        + "; ".join(
            f"round {i}: startup {pair['supervised']['startup_seconds'] - pair['plain']['startup_seconds']:+.1f} s, "
            f"text mean {delta_ms(pair, 'text'):+.0f} ms, image mean {delta_ms(pair, 'image'):+.0f} ms"
            for i, pair in enumerate(result["rounds"], start=1)
        )
        + ". By construction the supervisor can add to startup only its own interpreter start and at most one "
        "`/health` poll interval (1 s) before `/readyz` follows vLLM; requests never pass through it. "
        "Differences larger than that, in either direction, are the shared machine's load changing between "
        "runs (load average before/after: "
        f"{machine['load_average']} / {machine.get('load_average_after', 'not recorded')}). SIGTERM under the supervisor includes the "
        f"drain check ({result['drain_idle_polls']} idle polls of 0.5 s) before vLLM is stopped. Rounds "
        "alternate which mode starts first (odd rounds: plain vLLM first), against warm-cache bias.",
        SECTION_END,
    ])


def write_docs(section: str) -> None:
    replace_section(DOCS, SECTION_START, SECTION_END, section)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=30, help="measured requests per kind and mode")
    parser.add_argument("--rounds", type=int, default=1, help="plain/supervised pairs to run")
    parser.add_argument("--render-only", action="store_true",
                        help="rewrite the docs section from bench/results/runtime.json without running")
    args = parser.parse_args(argv)
    if args.render_only:
        section = markdown(json.loads(RESULTS.read_text()))
        write_docs(section)
        print(section)
        return 0
    if not 1 <= args.requests <= 500 or not 1 <= args.rounds <= 5:
        parser.error("--requests must be in 1..500 and --rounds in 1..5")
    from pixtral_runtime.supervisor.drain import IDLE_POLLS_REQUIRED

    load_average = os.getloadavg()
    rounds = []
    with tempfile.TemporaryDirectory(prefix="bench-runtime-") as tmp_name:
        tmp = Path(tmp_name)
        model = write_tiny_model(tmp / "tiny")
        for round_index in range(args.rounds):
            pair = {}
            modes = [("plain", run_plain), ("supervised", run_supervised)]
            for mode, run in modes if round_index % 2 == 0 else reversed(modes):
                settings = RuntimeSettings(model=str(model), served_model_name=SERVED_NAME, images_per_prompt=2,
                                           max_model_len=4096, max_num_seqs=4, host="127.0.0.1",
                                           vllm_port=free_port(), health_port=free_port(), extra_args=EXTRA_ARGS)
                print(f"[bench_runtime] round {round_index + 1}: {mode} ...", flush=True)
                pair[mode] = run(settings, tmp / "cache", args.requests, tmp / f"{mode}-{round_index}.log")
                print(f"[bench_runtime]   startup {pair[mode]['startup_seconds']:.1f}s", flush=True)
            rounds.append(pair)
    result = {
        "benchmark": "runtime supervisor overhead",
        "command": "make bench  # or: .venv/bin/python bench/bench_runtime.py " + " ".join(argv or sys.argv[1:]),
        "finished_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {"cpus": os.cpu_count(), "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30),
                    "platform": platform.platform(terse=True), "python": platform.python_version(),
                    "load_average": " ".join(f"{value:.1f}" for value in load_average)},
        "drain_idle_polls": IDLE_POLLS_REQUIRED,
        "rounds": rounds,
        "summary": [{mode: {kind: summary(pair[mode]["latency_seconds"][kind]) for kind in ("text", "image")}
                     | {"startup_seconds": pair[mode]["startup_seconds"]} for mode in pair} for pair in rounds],
    }
    result["machine"]["load_average_after"] = " ".join(f"{value:.1f}" for value in os.getloadavg())
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    section = markdown(result)
    write_docs(section)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
