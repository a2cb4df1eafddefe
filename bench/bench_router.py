"""Router benchmark: direct to a minimal upstream vs through one router process on one pinned core.

    python bench/bench_router.py [--duration 10] [--rates 500,1000,2000] [--streams 1000] [--hold 30]

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
from pathlib import Path

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="router benchmark (see module docstring)")
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
