"""Router benchmark: direct to a minimal upstream vs through one router process on one pinned core.

    python bench/bench_router.py [--duration 10] [--rates 500,1000,2000] [--streams 1000] [--hold 30]
    python bench/bench_router.py --hardening [--baseline e03b236] [--duration 10]
    python bench/bench_router.py --request-ids --baseline <commit> [--rounds 3] [--duration 10]
    python bench/bench_router.py --tracing [--rounds 3] [--duration 10]

Processes (all on 127.0.0.1, all stopped by PID at the end):
  router            `pixtral-runtime router --config ...`, pinned to core 0 (`taskset -c 0`)
  upstream          bench/upstream.py, pinned to core 1
  load generator    wrk (Debian package `wrk`) pinned to core 1 for the saturation runs; bounded
                    asyncio/aiohttp clients pinned to core 1 for the fixed-rate and held-stream runs

Reported, direct vs through the router: requests/s and p50/p99 at 32 connections in a closed
loop (saturation), and p50/p99 at fixed offered rates over 32 connections (below saturation);
the router's CPU time per request (its one-core capacity, even when the shared machine is busy);
1,000 streams held for 30 s: errors, events, router peak RSS. Results go to
bench/results/router.json and the "Router" section of docs/benchmarks.md.

`--hardening` runs the current router and a baseline (a git commit, checked out in a worktree
under /tmp) side by side, alternating, on the same machine in one run: plain requests, 1 MB image
bodies, 1,000 tenant keys (the last key presented), and the event-loop stall: the largest gap
between the chunks of a stream (one every 5 ms) while 50 MB image bodies are admitted (and
refused for their pixel count, so that the upstream never receives them). Results:
bench/results/router_hardening.json and the "Router hardening" section of docs/benchmarks.md.

`--request-ids` runs a baseline commit (before request IDs and the access log) and the current
router with the access log off and on, alternating, plain requests without an x-request-id:
bench/results/router_request_ids.json and the "Request IDs and access log" section.

`--tracing` runs the current router with tracing off, at samplingRatio 0.1 and at 1, exporting
over OTLP/gRPC to e2e/tools/otlp_receiver.py on loopback, alternating:
bench/results/router_tracing.json and the "Tracing" section.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from docsection import replace_section

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
KEY = "sk-bench"
CHAT = {"model": "bench", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 4}
CLK_TCK = os.sysconf("SC_CLK_TCK")
SECTION_START = "<!-- bench_router:start -->"
SECTION_END = "<!-- bench_router:end -->"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait_http(url: str, timeout: float = 60.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up within {timeout:.0f}s")


class Procs:
    """Started processes, stopped by PID (SIGTERM, then SIGKILL after a grace period)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, cmd: list[str], log: Path, **kw) -> subprocess.Popen:
        p = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, **kw)
        self.procs.append(p)
        return p

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


def parse_wrk(out: str) -> dict:
    def seconds(text: str) -> float:
        value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()
        return float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[unit]

    pct = {m.group(1): seconds(m.group(2)) for m in re.finditer(r"^\s+(50|75|90|99)%\s+(\S+)", out, re.M)}
    total = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "requests": total,
        "requests_per_second": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": round(pct["50"] * 1e3, 3),
        "p99_ms": round(pct["99"] * 1e3, 3),
        "socket_errors": sum(int(x) for x in errors.groups()) if errors else 0,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
    }


def run_wrk(url: str, connections: int, duration: int, lua: Path, core: str) -> dict:
    cmd = ["taskset", "-c", core, "wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency",
           "-s", str(lua), url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, check=True).stdout
    return parse_wrk(out)


async def hold_streams(url: str, streams: int, chunks: int, ramp_seconds: float) -> dict:
    """Open `streams` SSE requests (spread over `ramp_seconds`), read each to the end; count errors."""
    import resource

    import aiohttp

    # One socket per stream: lift the soft descriptor limit (often 1024) to the hard one.
    resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
    body = json.dumps({**CHAT, "stream": True, "max_tokens": chunks}).encode()
    headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
    results = {"ok": 0, "errors": 0, "chunks": 0, "error_samples": []}
    timeout = aiohttp.ClientTimeout(total=chunks * 3 + 120)
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async def one(i: int) -> None:
            await asyncio.sleep(ramp_seconds * i / streams)
            try:
                async with session.post(url, data=body, headers=headers) as r:
                    if r.status != 200:
                        raise RuntimeError(f"HTTP {r.status}")
                    n = 0
                    async for line in r.content:
                        if line.startswith(b"data: "):
                            n += 1
                    if n != chunks + 1:  # every token chunk plus [DONE]
                        raise RuntimeError(f"stream ended after {n} events")
                    results["ok"] += 1
                    results["chunks"] += n
            except Exception as exc:  # counted and sampled, the run goes on
                results["errors"] += 1
                if len(results["error_samples"]) < 5:
                    results["error_samples"].append(f"{exc.__class__.__name__}: {exc}"[:200])

        await asyncio.gather(*(one(i) for i in range(streams)))
    return results


async def fixed_rate(url: str, rate: float, connections: int, duration: float) -> dict:
    """Latency at a fixed offered rate (below saturation) over `connections` keep-alive connections.

    Each of the connections sends on its own schedule (rate / connections per second); a request
    that comes due while the previous one is still out waits for it, and that wait is counted
    (latency runs from the scheduled time), so a slow server cannot hide behind fewer requests.
    The client is the router's own lean HTTP/1.1 client (pixtral_runtime.router.upstream): on a
    2-core machine a heavier Python client would itself be the slowest part of the measurement.
    """
    from urllib.parse import urlsplit

    from pixtral_runtime.router.upstream import UpstreamError, UpstreamPool

    parts = urlsplit(url)
    body = json.dumps(CHAT).encode()
    headers = [(b"authorization", f"Bearer {KEY}".encode()), (b"content-type", b"application/json")]
    interval = connections / rate
    latencies: list[float] = []
    errors = 0
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.5
    end = start + duration
    pool = UpstreamPool(keepalive_seconds=60, max_idle_per_backend=connections)

    async def worker(i: int) -> None:
        nonlocal errors
        due = start + interval * i / connections
        while due < end:
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                response = await pool.request(parts.hostname, parts.port, b"POST", parts.path.encode(), headers, body)
                await response.read()
                response.release()
                if response.status != 200:
                    errors += 1
            except UpstreamError:
                errors += 1
            latencies.append(loop.time() - due)
            due += interval

    await asyncio.gather(*(worker(i) for i in range(connections)))
    pool.close()
    latencies.sort()
    n = len(latencies)
    return {
        "offered_rps": rate, "connections": connections, "requests": n, "errors": errors,
        "p50_ms": round(latencies[n // 2] * 1e3, 3), "p99_ms": round(latencies[min(n - 1, int(n * 0.99))] * 1e3, 3),
    }


def fixed_rate_phase(url: str, rate: float, connections: int, duration: float, core: str) -> dict:
    here = str(Path(__file__).parent)
    code = (
        f"import asyncio, json, sys; sys.path.insert(0, {here!r}); import bench_router as b; "
        f"print(json.dumps(asyncio.run(b.fixed_rate({url!r}, {rate}, {connections}, {duration}))))"
    )
    out = subprocess.run(["taskset", "-c", core, PY, "-c", code], capture_output=True, text=True,
                         timeout=duration + 120, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def stream_phase(router_url: str, router_pid: int, streams: int, hold: int, core: str) -> dict:
    """Run hold_streams in a pinned child process while sampling the router's RSS."""
    here, url = str(Path(__file__).parent), router_url + "/v1/chat/completions"
    code = (
        f"import asyncio, json, sys; sys.path.insert(0, {here!r}); import bench_router as b; "
        f"print(json.dumps(asyncio.run(b.hold_streams({url!r}, {streams}, {hold}, 2.0))))"
    )
    rss_start = rss_mb(router_pid)
    cpu_start = cpu_seconds(router_pid)
    child = subprocess.Popen(["taskset", "-c", core, PY, "-c", code], stdout=subprocess.PIPE, text=True)
    peak = rss_start
    deadline = time.monotonic() + hold * 3 + 180
    while child.poll() is None and time.monotonic() < deadline:
        peak = max(peak, rss_mb(router_pid))
        time.sleep(0.5)
    if child.poll() is None:
        child.kill()
    out, _ = child.communicate(timeout=30)
    result = json.loads(out.strip().splitlines()[-1])
    result.update(streams=streams, hold_seconds=hold, router_rss_start_mb=round(rss_start, 1),
                  router_rss_peak_mb=round(peak, 1),
                  router_cpu_seconds=round(cpu_seconds(router_pid) - cpu_start, 2))
    return result


def write_docs(results: dict, command: str) -> None:
    d, r, s = results["direct"], results["router"], results["streams"]
    fixed = results["fixed_rate"]
    fixed_rows = "\n".join(
        f"| {f['offered_rps']:g} req/s | {f['direct']['requests']} / {f['router']['requests']} "
        f"| {f['direct']['p50_ms']:.2f} ms | {f['router']['p50_ms']:.2f} ms | {f['added_p50_ms']:+.2f} ms "
        f"| {f['direct']['p99_ms']:.2f} ms | {f['router']['p99_ms']:.2f} ms | {f['added_p99_ms']:+.2f} ms "
        f"| {f['direct']['errors'] + f['router']['errors']} |"
        for f in fixed
    )
    worst_p50 = max(f["added_p50_ms"] for f in fixed)
    worst_p99 = max(f["added_p99_ms"] for f in fixed)
    top_rate = max(f["offered_rps"] for f in fixed)
    targets = results["targets"]
    ok = lambda flag: "met" if flag else "**missed**"  # noqa: E731
    n = results["connections"]
    little_ms = (n / r["requests_per_second"] - n / d["requests_per_second"]) * 1e3
    needed_rps = n / (n / d["requests_per_second"] + 1e-3)
    text = f"""{SECTION_START}
## Router

Command: `{command}` (also run by `make bench`). Router (`pixtral-runtime router`, static config,
one API key, limits off) pinned to core 0 with `taskset -c 0`; the upstream (`bench/upstream.py`:
a fixed chat completion JSON, a fixed SSE stream) and the load generators pinned to core 1.
Run on {results['machine']} at {results['when']}; load average before the run:
{results['loadavg_before']}. The machine is shared with other work, which also runs on core 0, so
the router's own CPU time per request is reported as well: it is what one dedicated core allows.

**Saturation** (`wrk` {results['wrk_version']}, Debian package `wrk`, 1 thread, {n} connections, closed loop:
each connection sends its next request as soon as the previous answer arrives), {results['duration_s']} s:

| {n} connections, non-streaming | requests/s | p50 | p99 | errors |
|---|---|---|---|---|
| direct to upstream | {d['requests_per_second']:.0f} | {d['p50_ms']:.2f} ms | {d['p99_ms']:.2f} ms | {d['socket_errors'] + d['non_2xx']} |
| through the router | {r['requests_per_second']:.0f} | {r['p50_ms']:.2f} ms | {r['p99_ms']:.2f} ms | {r['socket_errors'] + r['non_2xx']} |
| added by the router | | {r['p50_ms'] - d['p50_ms']:+.2f} ms | {r['p99_ms'] - d['p99_ms']:+.2f} ms | |

Router CPU per proxied request: {results['router_cpu_us_per_request']:.0f} us, i.e. up to
{results['router_capacity_rps_one_core']:.0f} requests/s on one dedicated core. In a closed loop each of the {n}
connections waits for its previous answer, so the latency is {n} / throughput (Little's law):
{n} / {r['requests_per_second']:.0f} - {n} / {d['requests_per_second']:.0f} = {little_ms:+.2f} ms predicted, {r['p50_ms'] - d['p50_ms']:+.2f} ms measured. That
is queueing behind the slower stage, not the cost of one request (see the table below for that):
+1 ms at saturation would need a router within 1 ms of the upstream's own {n}-connection latency,
i.e. at least {needed_rps:.0f} requests/s through one Python process proxying to a Python upstream.

**Latency below saturation** (each offered rate spread over {n} keep-alive connections, open
loop, latency from each request's scheduled time; an asyncio load generator on the router's own lean
HTTP/1.1 client, since a heavier Python client is itself the bottleneck on core 1), {results['duration_s']} s per row:

| offered rate, {n} connections | requests (direct / router) | p50 direct | p50 router | added p50 | p99 direct | p99 router | added p99 | errors |
|---|---|---|---|---|---|---|---|---|
{fixed_rows}

**Held streams**: {s['streams']} concurrent SSE streams through the router (opened over 2 s), each
{s['hold_seconds']} chunks one second apart, so all {s['streams']} are open together for about {s['hold_seconds'] - 2} s:
{s['ok']} completed, {s['errors']} errors, {s['chunks']} events relayed; router RSS
{s['router_rss_start_mb']:.0f} MB before, {s['router_rss_peak_mb']:.0f} MB peak; router CPU {s['router_cpu_seconds']:.1f} s.

| target | result | |
|---|---|---|
| >= 2,000 req/s through one router on one core | {r['requests_per_second']:.0f} req/s measured (core shared), {results['router_capacity_rps_one_core']:.0f} by CPU time | {ok(targets['throughput'])} |
| <= 1 ms added p50 at {n} clients | at most {worst_p50:+.2f} ms up to {top_rate:g} req/s; {r['p50_ms'] - d['p50_ms']:+.2f} ms at saturation | {ok(targets['added_p50_fixed_rate'])} below saturation, {ok(targets['added_p50_saturated'])} at saturation |
| <= 5 ms added p99 at {n} clients | at most {worst_p99:+.2f} ms up to {top_rate:g} req/s; {r['p99_ms'] - d['p99_ms']:+.2f} ms at saturation | {ok(targets['added_p99_fixed_rate'])} below saturation, {ok(targets['added_p99_saturated'])} at saturation |
| 1,000 streams, no error, < 400 MB RSS | {s['errors']} errors, {s['router_rss_peak_mb']:.0f} MB | {ok(targets['streams'])} |

Raw numbers: `bench/results/router.json`. Other runs and what limits the numbers on this shared
machine: [router.md](router.md#performance-notes).
{SECTION_END}
"""
    path = ROOT / "docs" / "benchmarks.md"
    current = path.read_text() if path.exists() else "# Benchmarks\n"
    if SECTION_START in current and SECTION_END in current:
        head, rest = current.split(SECTION_START, 1)
        tail = rest.split(SECTION_END, 1)[1]
        current = head + text.rstrip("\n") + tail
    else:
        current = current.rstrip("\n") + "\n\n" + text
    path.write_text(current)


HARDENING_START = "<!-- bench_router_hardening:start -->"
HARDENING_END = "<!-- bench_router_hardening:end -->"
STALL_INTERVAL = 0.005


def png_data_url(target_bytes: int, size: int = 64) -> str:
    """A data URL of about `target_bytes` decoded bytes: a real PNG header (size x size) and padding."""
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), (10, 120, 200)).save(buf, format="PNG")
    raw = buf.getvalue() + os.urandom(max(0, target_bytes - len(buf.getvalue())))
    return "data:image/png;base64," + base64.b64encode(raw).decode()


def wrk_lua(path: Path, body: bytes, key: str) -> Path:
    body_file = path.with_suffix(".body")
    body_file.write_bytes(body)
    path.write_text(
        f'local f = io.open("{body_file}", "rb"); wrk.body = f:read("*a"); f:close()\n'
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {key}"\n'
    )
    return path


async def stall_probe(url: str, big_body_file: str, posts: int) -> dict:
    """The largest gap between the chunks of one stream (a chunk every STALL_INTERVAL) while
    `posts` large bodies are posted one after another through the same router. The posts come
    from curl processes: sending 50 MB from this event loop would stall the very loop that
    measures the gaps."""
    import aiohttp

    headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
    chunks = 200_000
    stream_body = json.dumps({**CHAT, "stream": True, "max_tokens": chunks, "chunk_interval": STALL_INTERVAL})
    gaps: list[float] = []
    statuses: list[str] = []
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.post(url, data=stream_body, headers=headers) as stream:
            stop = asyncio.Event()

            async def read_stream() -> None:
                last = None
                async for _ in stream.content.iter_any():
                    now = time.perf_counter()
                    if last is not None and not stop.is_set():
                        gaps.append(now - last)
                    last = now
                    if stop.is_set():
                        return

            reader = asyncio.create_task(read_stream())
            await asyncio.sleep(1.0)
            quiet = len(gaps)
            for _ in range(posts):
                curl = await asyncio.create_subprocess_exec(
                    "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", f"authorization: Bearer {KEY}",
                    "-H", "content-type: application/json", "--data-binary", f"@{big_body_file}", url,
                    stdout=asyncio.subprocess.PIPE)
                out, _ = await curl.communicate()
                statuses.append(out.decode().strip())
            await asyncio.sleep(0.2)
            stop.set()
            reader.cancel()
    quiet_gaps, loaded_gaps = sorted(gaps[:quiet]), sorted(gaps[quiet:])
    return {
        "posts": posts, "statuses": statuses, "gaps_during_posts": len(loaded_gaps),
        "quiet_max_gap_ms": round(max(quiet_gaps) * 1e3, 1) if quiet_gaps else None,
        "max_gap_ms": round(max(loaded_gaps) * 1e3, 1) if loaded_gaps else None,
        "p99_gap_ms": round(loaded_gaps[int(len(loaded_gaps) * 0.99)] * 1e3, 1) if loaded_gaps else None,
        "max_stall_ms": round((max(loaded_gaps) - STALL_INTERVAL) * 1e3, 1) if loaded_gaps else None,
    }


def baseline_tree(ref: str) -> tuple[Path, Path]:
    """A worktree of `ref` under /tmp and a folder that maps `pixtral_runtime` onto its runtime/."""
    tree = Path(tempfile.mkdtemp(prefix="bench-router-baseline-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree / "src"), ref],
                   check=True, capture_output=True)
    shim = tree / "path"
    shim.mkdir()
    (shim / "pixtral_runtime").symlink_to(tree / "src" / "runtime")
    return tree, shim


def hardening(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="bench-router-hardening-"))
    tree, shim = baseline_tree(args.baseline)
    baseline_commit = subprocess.run(["git", "-C", str(tree / "src"), "rev-parse", "--short", "HEAD"],
                                     capture_output=True, text=True).stdout.strip()
    current_commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                    capture_output=True, text=True).stdout.strip()
    up_port = free_port()
    up_url = f"http://127.0.0.1:{up_port}"
    keys = {f"tenant-{i:04d}": f"sk-bench-{i:04d}" for i in range(999)}
    keys["bench"] = KEY  # the last of 1,000
    config = {
        "deployment": "bench", "servedModelName": "bench", "backends": {"stable": [up_url]}, "apiKeys": keys,
        "tenancy": {"defaultLimits": {"requestsPerMinute": 0, "maxConcurrent": 0}},
        "admission": {"maxBodyBytes": 64 * 1024 * 1024, "maxImageBytes": 48 * 1024 * 1024,
                      "imagesPerPrompt": 4},
    }
    (work / "router.json").write_text(json.dumps(config))
    image_1mb = png_data_url(768 * 1024)  # 1 MB of base64
    # 50 MB of base64 whose header claims 3,000 x 3,000 pixels: refused (400) once admission has
    # read the whole body, so the upstream never sees it and the stall is the router's alone.
    image_50mb = png_data_url(37 * 1024 * 1024 + 512 * 1024, size=3000)
    def chat_with(url: str) -> bytes:
        return json.dumps({**CHAT, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": url}}]}]}).encode()
    plain_lua = wrk_lua(work / "plain.lua", json.dumps(CHAT).encode(), KEY)
    image_lua = wrk_lua(work / "image.lua", chat_with(image_1mb), KEY)
    big_body = chat_with(image_50mb)
    print(f"[bench] bodies: 1 MB image request {image_lua.with_suffix('.body').stat().st_size} bytes, "
          f"large image request {len(big_body)} bytes", flush=True)
    procs = Procs()
    loadavg = Path("/proc/loadavg").read_text().split()[:3]
    results: dict = {"baseline": baseline_commit, "current": current_commit, "runs": {}}
    try:
        procs.start(["taskset", "-c", "1", PY, str(ROOT / "bench" / "upstream.py"), "--port", str(up_port)],
                    work / "upstream.log")
        wait_http(up_url + "/health")
        routers = {}
        for name, env in (("current", None), ("baseline", {**os.environ, "PYTHONPATH": str(shim)})):
            port = free_port()
            proc = procs.start(["taskset", "-c", "0", PY, "-m", "pixtral_runtime.cli", "router", "--config",
                                str(work / "router.json"), "--host", "127.0.0.1", "--port", str(port),
                                "--log-level", "warning"], work / f"router-{name}.log", env=env)
            routers[name] = (f"http://127.0.0.1:{port}", proc)
            wait_http(f"http://127.0.0.1:{port}/readyz")
        chat_path = "/v1/chat/completions"
        for url, _ in routers.values():
            run_wrk(url + chat_path, args.connections, 3, plain_lua, "1")  # warm-up
        # Alternating rounds: the shared machine's noise falls on both alike.
        for round_ in range(2):
            for name, (url, proc) in routers.items():
                for phase, lua in (("plain", plain_lua), ("image_1mb", image_lua)):
                    cpu0 = cpu_seconds(proc.pid)
                    out = run_wrk(url + chat_path, args.connections if phase == "plain" else 8, args.duration, lua, "1")
                    out["router_cpu_us_per_request"] = round(
                        (cpu_seconds(proc.pid) - cpu0) / max(out["requests"], 1) * 1e6, 1)
                    results["runs"].setdefault(name, {}).setdefault(phase, []).append(out)
                    print(f"[bench] round {round_ + 1} {name} {phase}: {out}", flush=True)
        for name, (url, proc) in routers.items():
            here = str(Path(__file__).parent)
            code = (f"import asyncio, json, sys; sys.path.insert(0, {here!r}); import bench_router as b; "
                    f"print(json.dumps(asyncio.run(b.stall_probe({url + chat_path!r}, {str(work / 'big.body')!r}, 3))))")
            (work / "big.body").write_bytes(big_body)
            rss0 = rss_mb(proc.pid)
            child = subprocess.run(["taskset", "-c", "1", PY, "-c", code], capture_output=True, text=True,
                                   timeout=600)
            if child.returncode:
                raise RuntimeError(child.stderr[-2000:])
            stall = json.loads(child.stdout.strip().splitlines()[-1])
            stall["router_rss_after_mb"] = round(rss_mb(proc.pid), 1)
            stall["router_rss_before_mb"] = round(rss0, 1)
            results["runs"][name]["stall_50mb"] = stall
            print(f"[bench] {name} loop stall with 50 MB bodies: {stall}", flush=True)
    finally:
        procs.stop_all()
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree / "src")],
                       capture_output=True)
        shutil.rmtree(tree, ignore_errors=True)

    def best(name: str, phase: str) -> dict:
        return max(results["runs"][name][phase], key=lambda r: r["requests_per_second"])

    results.update(
        when=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        machine=f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        loadavg_before=" ".join(loadavg), duration_s=args.duration, connections=args.connections,
    )
    ratio = best("current", "plain")["requests_per_second"] / best("baseline", "plain")["requests_per_second"]
    results["plain_throughput_ratio"] = round(ratio, 3)
    stall = results["runs"]["current"]["stall_50mb"]["max_stall_ms"]
    results["targets"] = {"throughput_within_10_percent": ratio >= 0.9,
                          "loop_stall_below_10_ms": stall is not None and stall < 10}
    out = ROOT / "bench" / "results" / "router_hardening.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    if not args.no_docs:
        write_hardening_docs(results)
    print(json.dumps({"plain_throughput_ratio": results["plain_throughput_ratio"], "targets": results["targets"]},
                     indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return 0


def write_hardening_docs(results: dict) -> None:
    rows = []
    for phase, label in (("plain", f"plain chat request, {results['connections']} connections"),
                         ("image_1mb", "1 MB image data URL, 8 connections")):
        for name in ("baseline", "current"):
            runs = results["runs"][name][phase]
            rps = ", ".join(f"{r['requests_per_second']:.0f}" for r in runs)
            cpu = ", ".join(f"{r['router_cpu_us_per_request']:.0f}" for r in runs)
            errors = sum(r["socket_errors"] + r["non_2xx"] for r in runs)
            rows.append(f"| {label} | {name} ({results[name]}) | {rps} | {cpu} | {errors} |")
    stall_rows = "\n".join(
        f"| {name} ({results[name]}) | {s['quiet_max_gap_ms']} ms | {s['max_gap_ms']} ms | {s['p99_gap_ms']} ms "
        f"| {s['max_stall_ms']} ms | {', '.join(map(str, s['statuses']))} | {s['router_rss_after_mb']:.0f} MB |"
        for name in ("baseline", "current") for s in [results["runs"][name]["stall_50mb"]]
    )
    targets = results["targets"]
    ok = lambda flag: "met" if flag else "**missed**"  # noqa: E731
    text = f"""{HARDENING_START}
## Router hardening

Command: `python bench/bench_router.py --hardening --baseline {results['baseline']}`: the router
before the hardening (baseline, commit {results['baseline']}, from a git worktree) and the current
one ({results['current']}) side by side in one run, on {results['machine']}, at {results['when']}
(load average before: {results['loadavg_before']}). Both routers pinned to core 0, upstream and
`wrk` to core 1, each phase {results['duration_s']} s, two alternating rounds (both numbers shown).
Static config with 1,000 API keys; the key presented is the last one (the baseline compared
keys one by one, the current router looks the key's digest up: part of the difference in CPU
per request). The machine is shared: requests/s swing by a factor of two between rounds, so
compare the routers within a round and by CPU time per request.

| load | router | requests/s (round 1, 2) | router CPU us/request | errors |
|---|---|---|---|---|
{chr(10).join(rows)}

Plain throughput, best round current / best round baseline: {results['plain_throughput_ratio']:.2f}
(target >= 0.90: {ok(targets['throughput_within_10_percent'])}).

**Event-loop stall**: one stream through the router with a chunk every 5 ms; meanwhile three
requests of about 50 MB (one image data URL whose header claims 3,000 x 3,000 pixels, refused with
a 400 after admission has read the whole body) are posted one after another through the same router.
Gap = time between two chunks arriving at the client; stall = largest gap minus 5 ms. "Quiet" is
the same stream during the second before the posts: what the shared machine does to a stream by
itself (a stall of its own of about {results['runs']['current']['stall_50mb']['quiet_max_gap_ms'] - 5:.0f} ms).

| router | largest gap, quiet | largest gap, 50 MB bodies | p99 gap | stall | statuses of the 50 MB requests | RSS after |
|---|---|---|---|---|---|---|
{stall_rows}

Target: no stall above 10 ms: {ok(targets['loop_stall_below_10_ms'])} (as measured, the machine's own
part included). Raw numbers:
`bench/results/router_hardening.json`.
{HARDENING_END}
"""
    path = ROOT / "docs" / "benchmarks.md"
    current = path.read_text()
    if HARDENING_START in current and HARDENING_END in current:
        head, rest = current.split(HARDENING_START, 1)
        current = head + text.rstrip("\n") + rest.split(HARDENING_END, 1)[1]
    else:
        marker = SECTION_END if SECTION_END in current else None
        if marker:
            head, tail = current.split(marker, 1)
            current = head + marker + "\n\n" + text.rstrip("\n") + tail
        else:
            current = current.rstrip("\n") + "\n\n" + text
    path.write_text(current)


REQUEST_IDS_START = "<!-- bench_router_request_ids:start -->"
REQUEST_IDS_END = "<!-- bench_router_request_ids:end -->"


def alternating_rounds(routers: dict[str, tuple[str, subprocess.Popen]], args: argparse.Namespace, lua: Path,
                       path: str, warmups: dict[str, int] | None = None) -> dict[str, list[dict]]:
    """`args.rounds` wrk runs of each router (url, process), the order turning each round so that no
    router always runs first or last; each run with the router's CPU time per request. `warmups`,
    if given, gets the requests each router served while warming up."""
    for name, (url, _) in routers.items():
        warm = run_wrk(url + path, args.connections, 3, lua, "1")
        if warmups is not None:
            warmups[name] = warm["requests"]
    names = list(routers)
    runs: dict[str, list[dict]] = {}
    for round_ in range(args.rounds):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            url, proc = routers[name]
            cpu0 = cpu_seconds(proc.pid)
            out = run_wrk(url + path, args.connections, args.duration, lua, "1")
            out["router_cpu_us_per_request"] = round(
                (cpu_seconds(proc.pid) - cpu0) / max(out["requests"], 1) * 1e6, 1)
            runs.setdefault(name, []).append(out)
            print(f"[bench] round {round_ + 1} {name}: {out}", flush=True)
    return runs


def round_cells(runs: list[dict]) -> dict[str, str | int]:
    """A router's rounds as table cells: every round's figure, comma-separated, and the errors of all."""
    return {
        "rps": ", ".join(f"{r['requests_per_second']:.0f}" for r in runs),
        "cpu": ", ".join(f"{r['router_cpu_us_per_request']:.0f}" for r in runs),
        "p50": ", ".join(f"{r['p50_ms']:.2f}" for r in runs),
        "p99": ", ".join(f"{r['p99_ms']:.2f}" for r in runs),
        "errors": sum(r["socket_errors"] + r["non_2xx"] for r in runs),
    }


def median_cpu(runs: list[dict]) -> float:
    values = sorted(r["router_cpu_us_per_request"] for r in runs)
    return values[len(values) // 2]


def request_ids(args: argparse.Namespace) -> int:
    """The cost of request IDs and the access log: the router before them (--baseline), the
    current router with the access log off, and with it on, side by side, alternating rounds."""
    work = Path(tempfile.mkdtemp(prefix="bench-router-request-ids-"))
    tree, shim = baseline_tree(args.baseline)
    commit = lambda where: subprocess.run(["git", "-C", str(where), "rev-parse", "--short", "HEAD"],  # noqa: E731
                                          capture_output=True, text=True).stdout.strip()
    baseline_commit, current_commit = commit(tree / "src"), commit(ROOT)
    up_port = free_port()
    up_url = f"http://127.0.0.1:{up_port}"
    config = {"deployment": "bench", "servedModelName": "bench", "backends": {"stable": [up_url]},
              "apiKeys": {"bench": KEY}, "tenancy": {"defaultLimits": {"requestsPerMinute": 0, "maxConcurrent": 0}}}
    (work / "router.json").write_text(json.dumps(config))
    # No x-request-id from the client: the router makes one for every request (the costlier path).
    lua = wrk_lua(work / "plain.lua", json.dumps(CHAT).encode(), KEY)
    variants = (("baseline", {**os.environ, "PYTHONPATH": str(shim)}, []),
                ("current, access log off", None, ["--no-access-log"]),
                ("current, access log on", None, ["--access-log"]))
    procs = Procs()
    loadavg = Path("/proc/loadavg").read_text().split()[:3]
    results: dict = {"baseline": baseline_commit, "current": current_commit, "runs": {}}
    chat_path = "/v1/chat/completions"
    try:
        procs.start(["taskset", "-c", "1", PY, str(ROOT / "bench" / "upstream.py"), "--port", str(up_port)],
                    work / "upstream.log")
        wait_http(up_url + "/health")
        routers = {}
        for i, (name, env, extra) in enumerate(variants):
            port = free_port()
            # stdout (the access log) goes to a file, as a container runtime's log pipe would take it.
            proc = procs.start(["taskset", "-c", "0", PY, "-m", "pixtral_runtime.cli", "router", "--config",
                                str(work / "router.json"), "--host", "127.0.0.1", "--port", str(port),
                                "--log-level", "warning", *extra], work / f"router-{i}.log", env=env)
            routers[name] = (f"http://127.0.0.1:{port}", proc)
            wait_http(f"http://127.0.0.1:{port}/readyz")
        results["runs"] = alternating_rounds(routers, args, lua, chat_path)
        logged = (work / "router-2.log").read_bytes().splitlines()
        results["access_log_lines"] = len(logged)
        results["access_log_example"] = json.loads(logged[-1]) if logged else None
    finally:
        procs.stop_all()
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree / "src")],
                       capture_output=True)
        shutil.rmtree(tree, ignore_errors=True)

    results.update(
        when=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        machine=f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        loadavg_before=" ".join(loadavg), duration_s=args.duration, connections=args.connections,
        median_cpu_us={name: median_cpu(results["runs"][name]) for name, _, _ in variants},
    )
    out = ROOT / "bench" / "results" / "router_request_ids.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    if not args.no_docs:
        write_request_ids_docs(results, [name for name, _, _ in variants])
    print(json.dumps(results["median_cpu_us"], indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return 0


def write_request_ids_docs(results: dict, names: list[str]) -> None:
    rows = []
    for name in names:
        c = round_cells(results["runs"][name])
        label = f"{name} ({results['baseline'] if name == 'baseline' else results['current']})"
        rows.append(f"| {label} | {c['rps']} | {c['p50']} | {c['cpu']} | {results['median_cpu_us'][name]:.0f} "
                    f"| {c['errors']} |")
    base = results["median_cpu_us"]["baseline"]
    text = f"""{REQUEST_IDS_START}
## Request IDs and access log

Command: `python bench/bench_router.py --request-ids --baseline {results['baseline']}`: the router
before request IDs and the access log (baseline, commit {results['baseline']}, from a git worktree)
and the current one ({results['current']}) with the access log off and on, side by side in one run,
on {results['machine']}, at {results['when']} (load average before: {results['loadavg_before']}).
Routers pinned to core 0, upstream and `wrk` to core 1, plain chat requests without an
`x-request-id` (the router makes one for each), {results['connections']} connections,
{results['duration_s']} s per run, {len(results['runs'][names[0]])} rounds, the order turning each round (all numbers shown). The access log went to
a file ({results['access_log_lines']} lines written). CPU time per request is the figure to read:
the shared machine's noise moves requests/s between rounds.

| router | requests/s | p50 ms | router CPU us/request | median CPU us/request | errors |
|---|---|---|---|---|---|
{chr(10).join(rows)}

Median CPU per request against the baseline: request IDs alone
{results['median_cpu_us'][names[1]] - base:+.0f} us, with the access log
{results['median_cpu_us'][names[2]] - base:+.0f} us. Raw numbers: `bench/results/router_request_ids.json`.
{REQUEST_IDS_END}
"""
    path = ROOT / "docs" / "benchmarks.md"
    current = path.read_text()
    if REQUEST_IDS_START in current and REQUEST_IDS_END in current:
        head, rest = current.split(REQUEST_IDS_START, 1)
        current = head + text.rstrip("\n") + rest.split(REQUEST_IDS_END, 1)[1]
    else:
        current = current.rstrip("\n") + "\n\n" + text
    path.write_text(current)


TRACING_START = "<!-- bench_router_tracing:start -->"
TRACING_END = "<!-- bench_router_tracing:end -->"
RECEIVER = ROOT / "e2e" / "tools" / "otlp_receiver.py"


def tracing(args: argparse.Namespace) -> int:
    """The cost of tracing on the router: off, on with samplingRatio 0.1, and on with 1 (every
    request), exporting over OTLP/gRPC to a receiver on loopback, side by side, alternating rounds."""
    work = Path(tempfile.mkdtemp(prefix="bench-router-tracing-"))
    up_port, grpc_port, http_port = free_port(), free_port(), free_port()
    up_url = f"http://127.0.0.1:{up_port}"
    base = {"deployment": "bench", "servedModelName": "bench", "backends": {"stable": [up_url]},
            "apiKeys": {"bench": KEY}, "tenancy": {"defaultLimits": {"requestsPerMinute": 0, "maxConcurrent": 0}}}
    variants = {"tracing off": {}, "samplingRatio 0.1": {"samplingRatio": 0.1}, "samplingRatio 1": {"samplingRatio": 1}}
    lua = wrk_lua(work / "plain.lua", json.dumps(CHAT).encode(), KEY)
    procs = Procs()
    loadavg = Path("/proc/loadavg").read_text().split()[:3]
    results: dict = {"current": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                               capture_output=True, text=True).stdout.strip()}
    chat_path = "/v1/chat/completions"
    try:
        procs.start(["taskset", "-c", "1", PY, str(ROOT / "bench" / "upstream.py"), "--port", str(up_port)],
                    work / "upstream.log")
        # The receiver shares core 1 with the upstream and wrk: the router's core does nothing else.
        procs.start(["taskset", "-c", "1", PY, str(RECEIVER), "--host", "127.0.0.1", "--grpc-port", str(grpc_port),
                     "--http-port", str(http_port)], work / "receiver.log")
        wait_http(up_url + "/health")
        wait_http(f"http://127.0.0.1:{http_port}/healthz")
        routers = {}
        for i, (name, policy) in enumerate(variants.items()):
            config = dict(base)
            if policy:
                config["tracing"] = {"endpoint": f"http://127.0.0.1:{grpc_port}", "protocol": "grpc", **policy}
            (work / f"router-{i}.json").write_text(json.dumps(config))
            port = free_port()
            proc = procs.start(["taskset", "-c", "0", PY, "-m", "pixtral_runtime.cli", "router", "--config",
                                str(work / f"router-{i}.json"), "--host", "127.0.0.1", "--port", str(port),
                                "--log-level", "warning", "--no-access-log"], work / f"router-{i}.log")
            routers[name] = (f"http://127.0.0.1:{port}", proc)
            wait_http(f"http://127.0.0.1:{port}/readyz")
        warmups: dict[str, int] = {}
        results["runs"] = alternating_rounds(routers, args, lua, chat_path, warmups)
        # Let the last batches leave (the SDK's schedule delay is 5 s) before counting what arrived.
        time.sleep(7)
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/stats", timeout=10) as answer:
            results["spans_received"] = json.loads(answer.read())["received"]
    finally:
        procs.stop_all()
    results.update(
        when=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        machine=f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        loadavg_before=" ".join(loadavg), duration_s=args.duration, connections=args.connections,
        median_cpu_us={name: median_cpu(results["runs"][name]) for name in variants},
        # Every request of ratio 1, a tenth of ratio 0.1's, warm-up runs included.
        requests_traced_expected=round(
            sum(r["requests"] for r in results["runs"]["samplingRatio 1"]) + warmups["samplingRatio 1"]
            + 0.1 * (sum(r["requests"] for r in results["runs"]["samplingRatio 0.1"]) + warmups["samplingRatio 0.1"])),
    )
    out = ROOT / "bench" / "results" / "router_tracing.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    if not args.no_docs:
        write_tracing_docs(results, list(variants))
    print(json.dumps({k: results[k] for k in ("median_cpu_us", "spans_received", "requests_traced_expected")},
                     indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return 0


def write_tracing_docs(results: dict, names: list[str]) -> None:
    rows = []
    for name in names:
        c = round_cells(results["runs"][name])
        rows.append(f"| {name} | {c['rps']} | {c['p50']} | {c['p99']} | {c['cpu']} "
                    f"| {results['median_cpu_us'][name]:.0f} | {c['errors']} |")
    off = results["median_cpu_us"][names[0]]
    text = f"""{TRACING_START}
## Tracing

Command: `python bench/bench_router.py --tracing` (commit {results['current']}): one router with
tracing off, one with `samplingRatio` 0.1 and one with 1 (every request traced), exporting over
OTLP/gRPC to `e2e/tools/otlp_receiver.py` on loopback, side by side in one run, on
{results['machine']}, at {results['when']} (load average before: {results['loadavg_before']}).
Routers pinned to core 0; the upstream, the receiver and `wrk` to core 1. Plain chat requests,
{results['connections']} connections, {results['duration_s']} s per run,
{len(results['runs'][names[0]])} rounds, the order turning each round (all numbers shown). The
router's CPU time per request includes its exporter thread: it is the figure to read.

| router | requests/s | p50 ms | p99 ms | router CPU us/request | median CPU us/request | errors |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Median CPU per request against tracing off: {results['median_cpu_us'][names[1]] - off:+.0f} us at
ratio 0.1, {results['median_cpu_us'][names[2]] - off:+.0f} us at ratio 1: with every request
traced, one router core is good for about {1e6 / results['median_cpu_us'][names[2]]:,.0f} requests/s
(against {1e6 / off:,.0f} untraced), far above what a Pixtral replica serves, so the default ratio of 1
costs router CPU, not throughput, until a deployment nears that rate per router replica. Most of
the cost is the OpenTelemetry SDK's span, its batching and the OTLP encoding in the exporter
thread; an unsampled request costs only its IDs and a header. The receiver counted
{results['spans_received']} spans, against about {results['requests_traced_expected']} expected
from the requests served (all of ratio 1's and a tenth of ratio 0.1's, warm-up runs included).
Raw numbers: `bench/results/router_tracing.json`.
{TRACING_END}
"""
    replace_section(ROOT / "docs" / "benchmarks.md", TRACING_START, TRACING_END, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="router benchmark (see module docstring)")
    parser.add_argument("--hardening", action="store_true",
                        help="current router vs --baseline side by side: plain, 1 MB images, 1,000 keys, loop stall")
    parser.add_argument("--request-ids", action="store_true",
                        help="the cost of request IDs and the access log: --baseline vs current, log off and on")
    parser.add_argument("--tracing", action="store_true",
                        help="the cost of tracing: off, samplingRatio 0.1 and 1, exporting to a receiver on loopback")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (--request-ids, --tracing)")
    parser.add_argument("--baseline", default="e03b236",
                        help="git commit of the router to compare with (--hardening; default: before the hardening)")
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--hold", type=int, default=30, help="seconds each stream stays open")
    parser.add_argument("--rates", default="500,1000,2000",
                        help="comma-separated offered req/s of the fixed-rate latency runs (below saturation)")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    args = parser.parse_args(argv)
    try:
        rates = [float(r) for r in args.rates.split(",") if r.strip()]
    except ValueError:
        parser.error(f"--rates must be numbers separated by commas, got {args.rates!r}")
    if not rates or min(rates) <= 0:
        parser.error("--rates needs at least one positive rate")
    if shutil.which("wrk") is None:
        print("bench_router: needs `wrk` (apt-get install wrk)", file=sys.stderr)
        return 2
    if (os.cpu_count() or 1) < 2:
        print("bench_router: needs two cores (router on one, load on the other)", file=sys.stderr)
        return 2
    if args.hardening:
        return hardening(args)
    if args.request_ids:
        return request_ids(args)
    if args.tracing:
        return tracing(args)

    work = Path(tempfile.mkdtemp(prefix="bench-router-"))
    up_port, router_port = free_port(), free_port()
    up_url, router_url = f"http://127.0.0.1:{up_port}", f"http://127.0.0.1:{router_port}"
    config = {
        "deployment": "bench", "servedModelName": "bench",
        "backends": {"stable": [up_url]}, "apiKeys": {"bench": KEY},
        "tenancy": {"defaultLimits": {"requestsPerMinute": 0, "maxConcurrent": 0}},
    }
    (work / "router.json").write_text(json.dumps(config))
    lua = work / "post.lua"
    lua.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = '{json.dumps(CHAT)}'\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {KEY}"\n'
    )
    procs = Procs()
    loadavg = Path("/proc/loadavg").read_text().split()[:3]
    try:
        procs.start(["taskset", "-c", "1", PY, str(ROOT / "bench" / "upstream.py"), "--port", str(up_port),
                     "--chunk-interval", "1.0"], work / "upstream.log")
        router = procs.start(["taskset", "-c", "0", PY, "-m", "pixtral_runtime.cli", "router",
                              "--config", str(work / "router.json"), "--host", "127.0.0.1",
                              "--port", str(router_port), "--log-level", "warning"], work / "router.log")
        wait_http(up_url + "/health")
        wait_http(router_url + "/readyz")

        chat_path = "/v1/chat/completions"
        print(f"[bench] warm-up ({args.connections} connections, 3 s each)", flush=True)
        run_wrk(up_url + chat_path, args.connections, 3, lua, "1")
        run_wrk(router_url + chat_path, args.connections, 3, lua, "1")
        print(f"[bench] direct: wrk {args.duration}s", flush=True)
        direct = run_wrk(up_url + chat_path, args.connections, args.duration, lua, "1")
        print(f"[bench]   {direct}", flush=True)
        print(f"[bench] through the router: wrk {args.duration}s", flush=True)
        cpu0 = cpu_seconds(router.pid)
        via = run_wrk(router_url + chat_path, args.connections, args.duration, lua, "1")
        router_cpu = cpu_seconds(router.pid) - cpu0
        print(f"[bench]   {via} (router CPU {router_cpu:.2f}s)", flush=True)
        fixed = []
        for rate in rates:
            print(f"[bench] fixed rate {rate:g} req/s over {args.connections} connections, {args.duration}s each",
                  flush=True)
            fixed_direct = fixed_rate_phase(up_url + chat_path, rate, args.connections, args.duration, "1")
            print(f"[bench]   direct {fixed_direct}", flush=True)
            fixed_via = fixed_rate_phase(router_url + chat_path, rate, args.connections, args.duration, "1")
            print(f"[bench]   router {fixed_via}", flush=True)
            fixed.append({"offered_rps": rate, "direct": fixed_direct, "router": fixed_via,
                          "added_p50_ms": round(fixed_via["p50_ms"] - fixed_direct["p50_ms"], 3),
                          "added_p99_ms": round(fixed_via["p99_ms"] - fixed_direct["p99_ms"], 3)})
        print(f"[bench] {args.streams} streams held {args.hold}s", flush=True)
        streams = stream_phase(router_url, router.pid, args.streams, args.hold, "1")
        print(f"[bench]   {streams}", flush=True)
    finally:
        procs.stop_all()

    cpu_us = router_cpu / max(via["requests"], 1) * 1e6
    capacity = 1e6 / cpu_us if cpu_us else 0.0
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split()[1:2]
    results = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "loadavg_before": " ".join(loadavg),
        "wrk_version": wrk_version[0] if wrk_version else "?",
        "connections": args.connections,
        "duration_s": args.duration,
        "direct": direct,
        "router": via,
        "router_cpu_seconds": round(router_cpu, 2),
        "router_cpu_us_per_request": round(cpu_us, 1),
        "router_capacity_rps_one_core": round(capacity),
        "added_p50_ms": round(via["p50_ms"] - direct["p50_ms"], 3),
        "added_p99_ms": round(via["p99_ms"] - direct["p99_ms"], 3),
        "fixed_rate": fixed,
        "streams": streams,
    }
    results["targets"] = {
        "throughput": via["requests_per_second"] >= 2000,
        "added_p50_saturated": results["added_p50_ms"] <= 1.0,
        "added_p99_saturated": results["added_p99_ms"] <= 5.0,
        # Below saturation, at every offered rate of the sweep.
        "added_p50_fixed_rate": all(f["added_p50_ms"] <= 1.0 for f in fixed),
        "added_p99_fixed_rate": all(f["added_p99_ms"] <= 5.0 for f in fixed),
        "streams": streams["errors"] == 0 and streams["ok"] == args.streams and streams["router_rss_peak_mb"] < 400,
    }
    out = ROOT / "bench" / "results" / "router.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    command = "python bench/bench_router.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    if not args.no_docs:
        write_docs(results, command.strip())
    print(json.dumps({k: results[k] for k in ("added_p50_ms", "added_p99_ms", "router_capacity_rps_one_core",
                                              "targets")}, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
