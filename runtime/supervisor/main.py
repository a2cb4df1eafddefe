"""`pixtral-runtime serve`: start vLLM for Pixtral as a child process and supervise it.

- Logs: vLLM's stdout/stderr lines are forwarded to ours; the last `LOG_TAIL_LINES` are kept.
- `/healthz` (health port): 200 while the supervisor runs and the vLLM process is alive.
- `/readyz`: 200 when vLLM's own `/health` answers OK and the pod is not draining, else 503 with
  the reason. The supervisor is never in the data path: clients talk to vLLM's port directly.
- SIGTERM/SIGINT: unready at once, wait until vLLM's `/metrics` shows no running and no waiting
  requests (or the drain timeout passes), then SIGTERM vLLM's process group (SIGKILL after
  `STOP_GRACE_SECONDS`) and exit 0.
- vLLM dying on its own: its last log lines go to stderr and the supervisor exits 1, so
  Kubernetes restarts the pod.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib.metadata
import os
import shlex
import shutil
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from pixtral_runtime.supervisor.command import LaunchForm, detect_launch_form, vllm_command
from pixtral_runtime.supervisor.drain import DrainAction, DrainState, next_drain_step, requests_in_flight
from pixtral_runtime.supervisor.preflight import preflight_problem, visible_devices
from pixtral_runtime.supervisor.settings import RuntimeSettings, SettingsError, settings_from, usage

PROG = "pixtral-runtime serve"
LOG_TAIL_LINES = 50
HEALTH_POLL_SECONDS = 1.0
HEALTH_TIMEOUT_SECONDS = 3.0
UNHEALTHY_AFTER_FAILURES = 3
DRAIN_POLL_SECONDS = 0.5
EXIT_POLL_SECONDS = 0.2
# The operator leaves 15 s of the pod's grace period after the drain timeout; stopping vLLM must fit.
STOP_GRACE_SECONDS = 10.0
EXIT_VLLM_DIED = 1
EXIT_BAD_SETTINGS = 2
# Kubernetes' default terminationMessagePath: what is written there shows in `kubectl describe pod`
# and in the container status (lastState.terminated.message), where the operator can read it.
TERMINATION_MESSAGE_PATH = Path("/dev/termination-log")
TERMINATION_MESSAGE_LIMIT = 4096  # bytes the kubelet keeps


def distribution_installed(name: str) -> bool:
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def local_address(host: str) -> str:
    """Where the supervisor reaches vLLM: a wildcard bind is reachable on loopback."""
    if host in {"", "0.0.0.0"}:
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def readiness(vllm_alive: bool, vllm_healthy: bool, draining: bool) -> tuple[bool, str]:
    """(ready, reason) for /readyz; pure so the precedence is testable."""
    if draining:
        return False, "draining: SIGTERM received, finishing in-flight requests"
    if not vllm_alive:
        return False, "vLLM process is not running"
    if not vllm_healthy:
        return False, "vLLM /health is not OK yet (starting or unhealthy)"
    return True, "ready"


@dataclass
class SupervisorState:
    process: asyncio.subprocess.Process | None = None
    vllm_healthy: bool = False
    vllm_was_ready: bool = False
    draining: bool = False
    stopping: bool = False
    log_tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=LOG_TAIL_LINES))

    @property
    def vllm_alive(self) -> bool:
        return self.process is not None and self.process.returncode is None


def _http_response(status: int, body: str) -> bytes:
    reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
    payload = (body + "\n").encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + payload


def probe_response(path: str, state: SupervisorState) -> tuple[int, str]:
    if path == "/healthz":
        if state.vllm_alive:
            return 200, "ok: supervisor and vLLM process alive"
        return 503, "vLLM process is not running"
    if path == "/readyz":
        ready, reason = readiness(state.vllm_alive, state.vllm_healthy, state.draining)
        return (200 if ready else 503), reason
    return 404, "not found: use /healthz or /readyz"


async def _serve_probe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: SupervisorState) -> None:
    # A minimal HTTP/1.1 responder: probes send one GET and read one answer; a full web
    # framework would only add start-up time and dependencies to the pod's critical path.
    try:
        request_line = await asyncio.wait_for(reader.readline(), timeout=5)
        while True:
            header = await asyncio.wait_for(reader.readline(), timeout=5)
            if header in {b"\r\n", b"\n", b""}:
                break
        parts = request_line.decode("latin-1").split()
        path = parts[1].split("?", 1)[0] if len(parts) >= 2 else ""
        status, body = probe_response(path, state)
        writer.write(_http_response(status, body))
        await writer.drain()
    except (TimeoutError, ConnectionError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def is_supervisor_probe_log(line: str) -> bool:
    """vLLM's access-log line for the supervisor's own once-a-second `/health` poll. Nothing else
    calls vLLM's /health (Kubernetes probes the supervisor), so these lines only drown the log."""
    return '"GET /health HTTP/1.1" 200' in line


async def _forward(stream: asyncio.StreamReader, sink, state: SupervisorState) -> None:
    while True:
        try:
            raw = await stream.readline()
        except ValueError:  # a line longer than the reader's limit: pass the chunk through
            raw = await stream.read(1 << 16)
        if not raw:
            return
        line = raw.decode("utf-8", errors="replace").rstrip("\n")
        if is_supervisor_probe_log(line):
            continue
        state.log_tail.append(line)
        print(line, file=sink, flush=True)


def next_health(healthy: bool, failures: int, check_ok: bool) -> tuple[bool, int]:
    """(healthy, consecutive failures) after one poll of vLLM's /health. Healthy at the first OK;
    unhealthy only after UNHEALTHY_AFTER_FAILURES failures in a row, so one slow answer from a busy
    engine does not pull the pod out of its Service (the probe's own threshold sees this value)."""
    if check_ok:
        return True, 0
    failures += 1
    return (healthy and failures < UNHEALTHY_AFTER_FAILURES), failures


async def _watch_health(client: httpx.AsyncClient, base_url: str, state: SupervisorState) -> None:
    failures = 0
    while state.vllm_alive:
        try:
            response = await client.get(f"{base_url}/health", timeout=HEALTH_TIMEOUT_SECONDS)
            check_ok = response.status_code == 200
        except httpx.HTTPError:
            check_ok = False
        state.vllm_healthy, failures = next_health(state.vllm_healthy, failures, check_ok)
        if state.vllm_healthy and not state.vllm_was_ready:
            state.vllm_was_ready = True
            log(f"vLLM is ready on {base_url}")
        await asyncio.sleep(HEALTH_POLL_SECONDS)


async def _read_in_flight(client: httpx.AsyncClient, base_url: str) -> int | None:
    try:
        response = await client.get(f"{base_url}/metrics", timeout=2.0)
    except httpx.HTTPError:
        return None
    return requests_in_flight(response.text) if response.status_code == 200 else None


async def _drain(client: httpx.AsyncClient, base_url: str, state: SupervisorState, timeout: float) -> None:
    started = time.monotonic()
    drain_state = DrainState()
    while state.vllm_alive:
        in_flight = await _read_in_flight(client, base_url) if state.vllm_was_ready else None
        action, drain_state = next_drain_step(
            drain_state, in_flight, time.monotonic() - started, timeout, state.vllm_was_ready
        )
        if action is not DrainAction.WAIT:
            log(f"drain finished after {time.monotonic() - started:.1f}s ({action.value})")
            return
        await asyncio.sleep(DRAIN_POLL_SECONDS)


async def _exited(process: asyncio.subprocess.Process) -> int:
    """Wait for the vLLM process itself to exit. `Process.wait()` is not enough: it returns only
    once the child's pipes are closed too, and vLLM's engine processes (its grandchildren) hold
    them open after a crash of the API server."""
    while process.returncode is None:
        await asyncio.sleep(EXIT_POLL_SECONDS)
    return process.returncode


def _signal_group(process: asyncio.subprocess.Process, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


async def _stop_vllm(process: asyncio.subprocess.Process) -> None:
    _signal_group(process, signal.SIGTERM)
    try:
        await asyncio.wait_for(_exited(process), timeout=STOP_GRACE_SECONDS)
    except TimeoutError:
        log(f"vLLM did not stop within {STOP_GRACE_SECONDS:.0f}s of SIGTERM; sending SIGKILL")
        _signal_group(process, signal.SIGKILL)
        await _exited(process)
    # vLLM's engine/worker processes share its process group; make sure none outlive it.
    _signal_group(process, signal.SIGKILL)


def write_termination_message(message: str, path: Path = TERMINATION_MESSAGE_PATH) -> None:
    """Best effort, and only inside a container (where the kubelet created the file)."""
    if not path.exists():
        return
    data = message.encode("utf-8", errors="replace")
    if len(data) > TERMINATION_MESSAGE_LIMIT:
        # Keep the end: the last lines of a crash say the most.
        data = data[-TERMINATION_MESSAGE_LIMIT:]
    with contextlib.suppress(OSError):
        path.write_bytes(data)


def fail(message: str) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    write_termination_message(message)
    return EXIT_BAD_SETTINGS


def log(message: str) -> None:
    print(f"[{PROG}] {message}", file=sys.stderr, flush=True)


async def supervise(settings: RuntimeSettings, command: Sequence[str], env: Mapping[str, str]) -> int:
    state = SupervisorState()
    loop = asyncio.get_running_loop()
    terminate = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, terminate.set)

    probe_server = await asyncio.start_server(
        lambda r, w: _serve_probe(r, w, state), host=settings.host or None, port=settings.health_port
    )
    log(f"health server on {settings.host}:{settings.health_port} (/healthz, /readyz)")
    log("starting vLLM: " + shlex.join(command))
    state.process = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env),
        start_new_session=True,  # own process group: the whole vLLM tree is stopped together
        limit=1 << 20,
    )
    process = state.process
    base_url = f"http://{local_address(settings.host)}:{settings.vllm_port}"
    forwarders = [
        asyncio.create_task(_forward(process.stdout, sys.stdout, state)),
        asyncio.create_task(_forward(process.stderr, sys.stderr, state)),
    ]
    async with httpx.AsyncClient() as client:
        health_task = asyncio.create_task(_watch_health(client, base_url, state))
        exited = asyncio.create_task(_exited(process))
        terminated = asyncio.create_task(terminate.wait())
        try:
            await asyncio.wait({exited, terminated}, return_when=asyncio.FIRST_COMPLETED)
            if not exited.done():
                state.draining = True
                log(f"SIGTERM: not ready any more; draining for at most {settings.drain_timeout_seconds:.0f}s")
                drain = asyncio.create_task(_drain(client, base_url, state, settings.drain_timeout_seconds))
                await asyncio.wait({drain, exited}, return_when=asyncio.FIRST_COMPLETED)
                if not exited.done():
                    state.stopping = True
                    await _stop_vllm(process)
                    await asyncio.wait(forwarders, timeout=5)
                    log(f"vLLM stopped (exit code {process.returncode}); exiting 0")
                    return 0
            # The engine processes vLLM spawned share its group and hold the log pipes open:
            # end them first so the forwarders see end-of-file and the last lines are complete.
            _signal_group(process, signal.SIGKILL)
            await asyncio.wait(forwarders, timeout=5)
            log(f"vLLM exited on its own with code {process.returncode}; its last {len(state.log_tail)} log lines:")
            for line in state.log_tail:
                print(f"  | {line}", file=sys.stderr)
            sys.stderr.flush()
            last_lines = "\n".join(list(state.log_tail)[-20:])
            write_termination_message(f"vLLM exited on its own with code {process.returncode}:\n{last_lines}")
            return EXIT_VLLM_DIED
        finally:
            for task in (health_task, terminated, exited, *forwarders):
                task.cancel()
            if process.returncode is None:
                _signal_group(process, signal.SIGKILL)
                await _exited(process)
            probe_server.close()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)


def child_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """vLLM's environment: ours, with Python output unbuffered so its log lines reach the pod log
    (and the crash report's tail) as they are written, not in 8 KiB blocks, and media URL
    redirects off (a redirect would lead a fetch past the allowed domains; docs/router.md)."""
    return {**environ, "PYTHONUNBUFFERED": "1", "VLLM_MEDIA_URL_ALLOW_REDIRECTS": "0"}


def resolve_command(settings: RuntimeSettings, environ: Mapping[str, str]) -> tuple[list[str], LaunchForm]:
    form = detect_launch_form(distribution_installed)
    command = vllm_command(settings, form, sys.executable)
    if form is LaunchForm.VLLM_SERVE:
        # Prefer the `vllm` script beside this interpreter (a venv that is not on PATH).
        sibling = Path(sys.executable).with_name("vllm")
        command[0] = str(sibling) if sibling.exists() else (shutil.which("vllm", path=environ.get("PATH")) or "vllm")
    return command, form


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if any(arg in {"-h", "--help"} for arg in args):
        print(usage())
        return 0
    environ = dict(os.environ)
    try:
        settings = settings_from(args, environ)
        command, form = resolve_command(settings, environ)
    except SettingsError as error:
        return fail(str(error))
    cpu_build = form is LaunchForm.API_SERVER_MODULE
    devices = visible_devices(environ, cpu_build=cpu_build, cpu_count=len(os.sched_getaffinity(0)))
    problem = preflight_problem(
        settings, devices, is_dir=os.path.isdir, list_dir=os.listdir, exists=os.path.exists
    )
    if problem:
        return fail(problem)
    try:
        return asyncio.run(supervise(settings, command, child_environment(environ)))
    except OSError as error:  # e.g. the health port is taken or vLLM cannot be executed
        return fail(str(error))
