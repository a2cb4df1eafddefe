"""Starting and stopping background processes by PID, safely.

A PID alone can be reused after its process exits, so every record also keeps the process'
start time (field 22 of /proc/<pid>/stat); a process is only signalled when both match.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


def start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces; fields after it are fixed.
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[19])


def is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


@dataclass(frozen=True)
class ProcessRecord:
    name: str
    pid: int
    started: int  # /proc start time, in clock ticks since boot

    def alive(self) -> bool:
        return start_time(self.pid) == self.started and not is_zombie(self.pid)

    def to_dict(self) -> dict:
        return {"name": self.name, "pid": self.pid, "started": self.started}

    @classmethod
    def from_dict(cls, data: dict) -> ProcessRecord:
        return cls(str(data["name"]), int(data["pid"]), int(data["started"]))


def spawn(name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> ProcessRecord:
    """Starts argv in its own session (so it outlives the caller), output appended to log_path."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log, open(os.devnull, "rb") as devnull:
        process = subprocess.Popen(argv, stdin=devnull, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   cwd=cwd, start_new_session=True)
    started = start_time(process.pid)
    if started is None:
        raise RuntimeError(f"{name} exited immediately; see {log_path}")
    return ProcessRecord(name, process.pid, started)


def signal_group(record: ProcessRecord, sig: int) -> bool:
    """Signals the record's process group (it leads its own session); False if it is gone."""
    if not record.alive():
        return False
    try:
        os.killpg(record.pid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        os.kill(record.pid, sig)
    return True


def stop(record: ProcessRecord, grace_seconds: float = 10.0) -> None:
    """SIGTERM, then SIGKILL once grace_seconds have passed; returns when the process is gone."""
    if not signal_group(record, signal.SIGTERM):
        return
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline:
        _reap(record.pid)
        if not record.alive():
            return
        time.sleep(0.1)
    signal_group(record, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while record.alive() and time.monotonic() < deadline:
        _reap(record.pid)
        time.sleep(0.05)


def _reap(pid: int) -> None:
    # Children of this process would stay zombies until waited for.
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
