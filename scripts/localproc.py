"""Process handling shared by scripts/kafka_local.py and scripts/k8s_local.py (stdlib only).

A background process is remembered by the pid in a pid file and only ever signalled by that pid,
after checking through /proc/<pid>/cmdline that the pid still runs what we started (pids get
reused). Children started by this interpreter are kept in CHILDREN so they are reaped through
their Popen, and no Popen is garbage-collected while its child runs (a ResourceWarning, an error
under pytest's settings).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

CHILDREN: dict[int, subprocess.Popen[bytes]] = {}
KILL_TIMEOUT_S = 10.0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(Path(pid_file).read_text().strip())
    except (OSError, ValueError):
        return None


def is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] == "Z"


def alive(pid: int) -> bool:
    child = CHILDREN.get(pid)
    if child is not None:
        # Started by this process: poll() reaps it, so it never lingers as a zombie.
        if child.poll() is None:
            return True
        del CHILDREN[pid]
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not is_zombie(pid)


def cmdline(pid: int) -> list[bytes]:
    """The pid's argv from /proc ([] when it is gone or unreadable)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def running_pid(pid_file: Path, is_ours: Callable[[int], bool]) -> int | None:
    """The pid in pid_file if that process is alive and is_ours(pid) holds."""
    pid = read_pid(pid_file)
    if pid and alive(pid) and is_ours(pid):
        return pid
    return None


def spawn(argv: list[str], log_path: Path, pid_file: Path, cwd: Path) -> subprocess.Popen[bytes]:
    """Start argv in the background (output appended to log_path); write its pid file."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,  # own process group: a Ctrl-C in the caller spares it
        )
    CHILDREN[proc.pid] = proc
    Path(pid_file).write_text(f"{proc.pid}\n")
    return proc


def wait_ready(
    pid: int, ready: Callable[[], bool], timeout: float, interval: float = 0.25
) -> Literal["ready", "exited", "timeout"]:
    """Poll ready() until it holds, the process exits, or timeout seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return "exited"
        if ready():
            return "ready"
        time.sleep(interval)
    return "timeout"


def stop_child(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """SIGTERM a child of ours by its pid, SIGKILL it after timeout; always reaped.
    True when it had to be killed."""
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
        return False
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(KILL_TIMEOUT_S)
        return True


def stop(pid_file: Path, is_ours: Callable[[int], bool], timeout: float) -> bool:
    """SIGTERM the pid in pid_file (if ours), SIGKILL it after timeout. True if it ran."""
    pid = running_pid(pid_file, is_ours)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and alive(pid):
            time.sleep(0.1)
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            kill_deadline = time.monotonic() + KILL_TIMEOUT_S
            while time.monotonic() < kill_deadline and alive(pid):
                time.sleep(0.05)
    Path(pid_file).unlink(missing_ok=True)
    return pid is not None
