"""Supervisor decisions without an engine: preflight reasons, drain steps from metrics text,
readiness precedence, and `main` failing fast on bad settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from pixtral_runtime.supervisor import main as supervisor_main
from pixtral_runtime.supervisor.drain import (
    IDLE_POLLS_REQUIRED,
    DrainAction,
    DrainState,
    next_drain_step,
    requests_in_flight,
)
from pixtral_runtime.supervisor.main import SupervisorState, local_address, probe_response, readiness
from pixtral_runtime.supervisor.preflight import (
    VisibleDevices,
    model_folder_problem,
    preflight_problem,
    tensor_parallel_problem,
    visible_devices,
)
from pixtral_runtime.supervisor.settings import RuntimeSettings

# Shape of vLLM 0.32's exposition (labels and HELP/TYPE lines as it writes them).
METRICS_BUSY = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny-pixtral"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="tiny-pixtral"} 3.0
vllm:num_requests_waiting_by_reason{engine="0",model_name="tiny-pixtral",reason="capacity"} 3.0
vllm:num_requests_running{engine="1",model_name="tiny-pixtral"} 1.0
vllm:num_requests_waiting{engine="1",model_name="tiny-pixtral"} 0.0
"""
METRICS_IDLE = """\
vllm:num_requests_running{engine="0",model_name="m"} 0.0
vllm:num_requests_waiting{engine="0",model_name="m"} 0.0
"""


def test_in_flight_sums_running_and_waiting_over_engines_and_ignores_other_series():
    assert requests_in_flight(METRICS_BUSY) == 6
    assert requests_in_flight(METRICS_IDLE) == 0


@pytest.mark.parametrize("text", ["", "# nothing\n", "vllm:num_requests_running 0.0\n",
                                  "vllm:num_requests_running 1\nvllm:num_requests_waiting NaN\n"])
def test_in_flight_is_unknown_when_the_gauges_are_missing_or_unreadable(text):
    assert requests_in_flight(text) is None


def test_drain_stops_only_after_consecutive_idle_polls():
    state = DrainState()
    action, state = next_drain_step(state, 4, 0.5, 30, vllm_was_ready=True)
    assert action is DrainAction.WAIT
    for poll in range(1, IDLE_POLLS_REQUIRED):
        action, state = next_drain_step(state, 0, 0.5 + poll, 30, vllm_was_ready=True)
        assert action is DrainAction.WAIT
    # A request showing up again resets the count.
    action, state = next_drain_step(state, 1, 5, 30, vllm_was_ready=True)
    assert (action, state.consecutive_idle_polls) == (DrainAction.WAIT, 0)
    for _ in range(IDLE_POLLS_REQUIRED - 1):
        action, state = next_drain_step(state, 0, 6, 30, vllm_was_ready=True)
    action, state = next_drain_step(state, 0, 7, 30, vllm_was_ready=True)
    assert action is DrainAction.STOP_IDLE


def test_drain_gives_up_at_the_timeout_even_when_metrics_are_unreadable():
    assert next_drain_step(DrainState(), None, 10, 30, True)[0] is DrainAction.WAIT
    assert next_drain_step(DrainState(), None, 30, 30, True)[0] is DrainAction.STOP_TIMEOUT
    assert next_drain_step(DrainState(), 7, 31, 30, True)[0] is DrainAction.STOP_TIMEOUT


def test_drain_stops_at_once_when_vllm_never_served():
    assert next_drain_step(DrainState(), None, 0, 30, vllm_was_ready=False)[0] is DrainAction.STOP_NOT_SERVING


def test_readiness_reasons_put_draining_first():
    assert readiness(True, True, False) == (True, "ready")
    assert readiness(True, True, True)[0] is False and "draining" in readiness(True, True, True)[1]
    assert "not running" in readiness(False, False, False)[1]
    assert "/health" in readiness(True, False, False)[1]


def test_probe_paths():
    state = SupervisorState()
    assert probe_response("/healthz", state)[0] == 503
    assert probe_response("/readyz", state)[0] == 503
    assert probe_response("/other", state)[0] == 404


@pytest.mark.parametrize(("host", "address"), [("0.0.0.0", "127.0.0.1"), ("", "127.0.0.1"), ("::", "[::1]"),
                                               ("10.0.0.5", "10.0.0.5"), ("fd00::5", "[fd00::5]")])
def test_supervisor_reaches_vllm_on_a_concrete_address(host, address):
    assert local_address(host) == address


@pytest.mark.parametrize(
    ("environ", "cpu_build", "cpus", "expected"),
    [
        ({"CUDA_VISIBLE_DEVICES": "0,1,2,3"}, False, 8, 4),
        ({"CUDA_VISIBLE_DEVICES": ""}, False, 8, 0),
        ({"NVIDIA_VISIBLE_DEVICES": "GPU-a,GPU-b"}, False, 8, 2),
        ({"NVIDIA_VISIBLE_DEVICES": "all"}, False, 8, None),
        ({"NVIDIA_VISIBLE_DEVICES": "void"}, False, 8, 0),
        ({}, False, 8, None),
        ({"CUDA_VISIBLE_DEVICES": "0"}, True, 2, 2),  # the CPU build ignores CUDA variables
        ({"VLLM_CPU_OMP_THREADS_BIND": "0|1"}, True, 2, 2),
        ({"VLLM_CPU_OMP_THREADS_BIND": "0-3"}, True, 8, 1),
        ({"VLLM_CPU_OMP_THREADS_BIND": "auto"}, True, 6, 6),
    ],
)
def test_visible_devices(environ, cpu_build, cpus, expected):
    assert visible_devices(environ, cpu_build, cpus).count == expected


def test_tensor_parallel_must_divide_the_visible_devices():
    assert tensor_parallel_problem(2, VisibleDevices(4, "CUDA_VISIBLE_DEVICES='0,1,2,3'")) is None
    assert tensor_parallel_problem(4, VisibleDevices(None, "unknown")) is None
    problem = tensor_parallel_problem(4, VisibleDevices(6, "CUDA_VISIBLE_DEVICES='0,1,2,3,4,5'"))
    assert problem == ("tensor parallel size 4 does not divide the 6 visible device(s) "
                       "(CUDA_VISIBLE_DEVICES='0,1,2,3,4,5')")
    assert "does not divide" in tensor_parallel_problem(2, VisibleDevices(1, "CPU cores"))
    assert "shows none" in tensor_parallel_problem(1, VisibleDevices(0, "CUDA_VISIBLE_DEVICES=''"))


def fake_fs(folders: dict[str, list[str]]):
    return dict(is_dir=lambda p: p in folders, list_dir=lambda p: folders[p],
                exists=lambda p: p in folders)


def test_model_folder_checks():
    complete = {"/m": ["params.json", "consolidated.safetensors", "tekken.json"]}
    assert model_folder_problem("/m", **fake_fs(complete)) is None
    sharded = {"/m": ["params.json", "model-00001.safetensors", "tekken.json"]}
    assert model_folder_problem("/m", **fake_fs(sharded)) is None
    assert model_folder_problem("/missing", **fake_fs({})) == "model folder /missing does not exist or is not a directory"
    assert model_folder_problem("/m", **fake_fs({"/m": ["params.json"]})) == (
        "model folder /m is missing tekken.json, consolidated.safetensors (or *.safetensors)"
    )
    # Hub names are left to vLLM.
    assert model_folder_problem("mistralai/Pixtral-12B-2409", **fake_fs({})) is None


def test_random_weights_need_no_weight_files_but_still_the_architecture_and_tokenizer():
    no_weights = {"/m": ["params.json", "tekken.json"]}
    assert model_folder_problem("/m", **fake_fs(no_weights), needs_weights=False) is None
    assert model_folder_problem("/m", **fake_fs(no_weights)) == (
        "model folder /m is missing consolidated.safetensors (or *.safetensors)"
    )
    assert model_folder_problem("/m", **fake_fs({"/m": ["params.json"]}), needs_weights=False) == (
        "model folder /m is missing tekken.json"
    )
    dummy = RuntimeSettings(model="/m", load_format="dummy")
    assert preflight_problem(dummy, VisibleDevices(1, "x"), **fake_fs(no_weights)) is None
    assert preflight_problem(RuntimeSettings(model="/m"), VisibleDevices(1, "x"), **fake_fs(no_weights)) is not None


def test_preflight_reports_the_first_problem():
    settings = RuntimeSettings(model="/m", tensor_parallel_size=2)
    problem = preflight_problem(settings, VisibleDevices(1, "CUDA_VISIBLE_DEVICES='0'"), **fake_fs({}))
    assert problem.startswith("tensor parallel size 2")
    problem = preflight_problem(settings, VisibleDevices(2, "x"), **fake_fs({}))
    assert problem.startswith("model folder /m")


def run_main(argv, monkeypatch, capsys, env=None):
    for key in list(supervisor_main.os.environ):
        if key.startswith("PIXTRAL_") or key in {"VLLM_CPU_OMP_THREADS_BIND"}:
            monkeypatch.delenv(key)
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    code = supervisor_main.main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


def test_main_fails_fast_on_a_missing_model_folder(tmp_path, monkeypatch, capsys):
    code, err = run_main(["--model", str(tmp_path / "nope")], monkeypatch, capsys)
    assert code == 2
    assert err == f"pixtral-runtime serve: model folder {tmp_path / 'nope'} does not exist or is not a directory"


def test_main_fails_fast_on_missing_model_files(tmp_path, monkeypatch, capsys):
    (tmp_path / "params.json").write_text("{}")
    code, err = run_main(["--model", str(tmp_path)], monkeypatch, capsys)
    assert code == 2
    assert "missing tekken.json, consolidated.safetensors" in err and "\n" not in err


def test_main_fails_fast_on_image_limit_below_one(monkeypatch, capsys):
    code, err = run_main([], monkeypatch, capsys, env={"PIXTRAL_IMAGES_PER_PROMPT": "0"})
    assert code == 2
    assert "image limit" in err and "got 0" in err and "\n" not in err


def test_main_fails_fast_when_tp_does_not_divide_the_cpu_ranks(tmp_path, monkeypatch, capsys):
    code, err = run_main(["--model", str(tmp_path), "--tensor-parallel-size", "2"], monkeypatch, capsys,
                         env={"VLLM_CPU_OMP_THREADS_BIND": "0"})
    assert code == 2
    assert "tensor parallel size 2 does not divide the 1 visible device(s)" in err


def test_main_refuses_a_conflicting_extra_arg(monkeypatch, capsys):
    code, err = run_main([], monkeypatch, capsys, env={"PIXTRAL_EXTRA_ARGS": '["--max-model-len=99"]'})
    assert code == 2
    assert "--max-model-len" in err and "managed" in err


def test_only_the_supervisors_own_health_poll_lines_are_dropped_from_the_log():
    from pixtral_runtime.supervisor.main import is_supervisor_probe_log

    assert is_supervisor_probe_log('INFO:     127.0.0.1:45380 - "GET /health HTTP/1.1" 200 OK')
    assert not is_supervisor_probe_log('INFO:     127.0.0.1:45380 - "GET /health HTTP/1.1" 503 Service Unavailable')
    assert not is_supervisor_probe_log('INFO:     10.0.0.9:1234 - "POST /v1/chat/completions HTTP/1.1" 200 OK')


def test_vllm_runs_unbuffered_with_our_environment():
    from pixtral_runtime.supervisor.main import child_environment

    assert child_environment({"VLLM_CPU_KVCACHE_SPACE": "1"}) == {
        "VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONUNBUFFERED": "1", "VLLM_MEDIA_URL_ALLOW_REDIRECTS": "0"}
    # A redirect would take a media fetch past the allowed domains: off even when asked for.
    assert child_environment({"VLLM_MEDIA_URL_ALLOW_REDIRECTS": "1"})["VLLM_MEDIA_URL_ALLOW_REDIRECTS"] == "0"


async def test_a_child_that_dies_makes_supervise_return_1_with_its_last_lines(capsys):
    """Failure path with a stand-in child: it prints and exits 3, as a crashing vLLM would."""
    import socket
    import sys

    from pixtral_runtime.supervisor.main import LOG_TAIL_LINES, supervise

    def free_port() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    settings = RuntimeSettings(host="127.0.0.1", vllm_port=free_port(), health_port=free_port())
    script = "import sys\nfor i in range(80): print(f'engine line {i}')\nprint('CUDA out of memory', file=sys.stderr)\nsys.exit(3)"
    code = await supervise(settings, [sys.executable, "-c", script], {"PYTHONUNBUFFERED": "1"})
    assert code == 1
    err = capsys.readouterr().err
    assert "vLLM exited on its own with code 3" in err
    tail = [line for line in err.splitlines() if line.startswith("  | ")]
    assert len(tail) == LOG_TAIL_LINES
    assert "  | CUDA out of memory" in tail
    assert "  | engine line 79" in tail and "  | engine line 0" not in tail


async def test_sigterm_before_vllm_is_ready_stops_the_child_and_returns_0(capsys):
    """Stand-in child that never serves: SIGTERM must not wait for a drain that cannot happen."""
    import asyncio
    import os
    import signal
    import socket
    import sys

    from pixtral_runtime.supervisor.main import supervise

    def free_port() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    settings = RuntimeSettings(host="127.0.0.1", vllm_port=free_port(), health_port=free_port(),
                               drain_timeout_seconds=60)
    loop = asyncio.get_running_loop()
    loop.call_later(1.0, os.kill, os.getpid(), signal.SIGTERM)
    code = await supervise(settings, [sys.executable, "-c", "import time; time.sleep(60)"], {})
    assert code == 0
    err = capsys.readouterr().err
    assert "vLLM never became ready" in err


async def test_a_killed_child_is_noticed_even_while_its_own_children_hold_the_log_pipes(tmp_path, capsys):
    """Failure path with stand-ins shaped like vLLM: an API-server process whose engine process
    (a grandchild) inherits stdout. SIGKILL on the API server alone must end the supervisor with
    exit 1 and take the orphaned grandchild down too."""
    import asyncio
    import os
    import signal
    import socket
    import sys

    from pixtral_runtime.supervisor.main import supervise

    def free_port() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    pids = tmp_path / "pids"
    script = (
        "import os, subprocess, sys, time\n"
        "engine = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{engine.pid}}')\n"
        "print('api server up', flush=True)\n"
        "time.sleep(120)\n"
    )
    settings = RuntimeSettings(host="127.0.0.1", vllm_port=free_port(), health_port=free_port())
    supervisor = asyncio.create_task(supervise(settings, [sys.executable, "-c", script], {}))
    for _ in range(100):
        if pids.exists() and pids.read_text().count(" ") == 1:
            break
        await asyncio.sleep(0.1)
    api_pid, engine_pid = map(int, pids.read_text().split())
    os.kill(api_pid, signal.SIGKILL)
    code = await asyncio.wait_for(supervisor, timeout=30)
    assert code == 1
    assert "vLLM exited on its own with code -9" in capsys.readouterr().err
    await asyncio.sleep(0.2)
    stat = Path(f"/proc/{engine_pid}/stat")
    # Gone, or a zombie waiting for init to reap it: either way no longer running.
    assert not stat.exists() or stat.read_text().split(") ", 1)[1].startswith("Z")


def test_termination_message_is_written_only_where_the_kubelet_created_the_file(tmp_path):
    from pixtral_runtime.supervisor.main import TERMINATION_MESSAGE_LIMIT, write_termination_message

    absent = tmp_path / "absent"
    write_termination_message("reason", absent)
    assert not absent.exists()
    present = tmp_path / "termination-log"
    present.write_text("")
    write_termination_message("model folder /m is missing tekken.json", present)
    assert present.read_text() == "model folder /m is missing tekken.json"
    write_termination_message("x" * 5000 + "the end", present)
    assert len(present.read_bytes()) == TERMINATION_MESSAGE_LIMIT
    assert present.read_text().endswith("the end")


def test_health_turns_on_at_once_and_off_only_after_repeated_failures():
    from pixtral_runtime.supervisor.main import UNHEALTHY_AFTER_FAILURES, next_health

    assert next_health(False, 0, True) == (True, 0)
    assert next_health(False, 0, False) == (False, 1)
    healthy, failures = True, 0
    for _ in range(UNHEALTHY_AFTER_FAILURES - 1):
        healthy, failures = next_health(healthy, failures, False)
        assert healthy
    healthy, failures = next_health(healthy, failures, False)
    assert not healthy
    assert next_health(healthy, failures, True) == (True, 0)
