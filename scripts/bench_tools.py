"""Small tools for `make bench`: smtp-sink/smtp-source output parsers, figures, and processes.

Standard library only; importable from tests (the parsers, `percentile` and `rate` are pure).
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import localproc  # a neighbour in scripts/, which is on sys.path

SINK_COUNTER_RE = re.compile(r"sess=(\d+)\s+quit=(\d+)\s+mesg=(\d+)")
STOP_TIMEOUT_S = 15.0


# --------------------------------------------------------------------------- parsers


@dataclass(frozen=True)
class SinkCounters:
    """One `smtp-sink -c` counter line: sessions ended, QUITs, messages received."""

    sessions: int
    quits: int
    messages: int


def parse_sink_counters(text: str) -> list[SinkCounters]:
    """Parse `smtp-sink -c` output ("sess=N quit=N mesg=N" records separated by CR)."""
    return [
        SinkCounters(int(m.group(1)), int(m.group(2)), int(m.group(3)))
        for m in SINK_COUNTER_RE.finditer(text)
    ]


def parse_source_counter(text: str) -> int:
    """The last value of `smtp-source -c`'s running counter ("1\\r2\\r..."), 0 if none."""
    numbers = [token for token in re.split(r"[\r\n]+", text) if token.strip().isdigit()]
    return int(numbers[-1]) if numbers else 0


def split_hostport(hostport: str) -> tuple[str, int]:
    host, _, port = hostport.rpartition(":")
    return host, int(port)


# --------------------------------------------------------------------------- figures


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile (pct in 0..100) of values; None when there are none."""
    if not values:
        return None
    if not 0 <= pct <= 100:
        raise ValueError(f"percentile out of range: {pct}")
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def rate(count: int, seconds: float | None) -> float | None:
    """Messages per second, rounded; None when the duration is missing or not positive."""
    if seconds is None or seconds <= 0 or count <= 0:
        return None
    return round(count / seconds, 1)


# --------------------------------------------------------------------------- processes


def stop_pid(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM one child by its pid, SIGKILL it after timeout; always reaped."""
    localproc.stop_child(proc, timeout)


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM (peak resident set) of a live process in MB, None if it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmHWM:\s+(\d+)\s+kB", status, re.MULTILINE)
    return round(int(match.group(1)) / 1024, 1) if match else None


def tail(path: Path, lines: int = 20) -> str:
    """The last lines of a log file, '' when it cannot be read."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class AiosmtpdSink:
    """Base of the benches' recording SMTP sinks: an aiosmtpd handler (the subclass's
    handle_DATA) served on host:port in aiosmtpd's own thread."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._lock = threading.Lock()
        self._controller: Any = None

    def start(self) -> None:
        from aiosmtpd.controller import Controller

        self._controller = Controller(self, hostname=self.host, port=self.port)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None


def new_result(stage: str, **fields: Any) -> dict[str, Any]:
    """The JSON result of a bench stage: its settings, how busy the machine was when it
    started (the figures are CPU-bound, they move with whatever else runs), and its errors."""
    loadavg = [round(v, 2) for v in os.getloadavg()]
    return {"stage": stage, **fields, "loadavg_at_start": loadavg, "errors": []}
