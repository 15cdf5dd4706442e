"""Postfix's SMTP load tools for `make bench`: `smtp-sink` (the receiver every relay delivers
to, timestamping each message it counts) and `smtp-source` (the load generator), and an
end-to-end run through a relay timed from first injected to last received.

Every process is started and stopped by its pid. Standard library only.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench_tools import (
    parse_sink_counters,
    parse_source_counter,
    rate,
    split_hostport,
    stop_pid,
    tail,
)

SMTP_SINK = "/usr/sbin/smtp-sink"
SMTP_SOURCE = "/usr/sbin/smtp-source"
# A run gives up when the sink has counted nothing new for this long.
STALL_S = 20.0


class SmtpSink:
    """Postfix's `smtp-sink` on host:port, with a timestamp for every message counted."""

    def __init__(self, listen: str, log_dir: Path, backlog: int = 1000) -> None:
        self.listen = listen
        self.backlog = backlog
        self.log_path = log_dir / f"smtp-sink-{listen.replace(':', '_')}.err"
        self._proc: subprocess.Popen[bytes] | None = None
        self._cond = threading.Condition()
        self._messages = 0
        self._reached: list[tuple[int, float]] = []  # (count, monotonic time) on each change
        self._thread: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> None:
        cmd = [SMTP_SINK, "-c", "-m", "1000"]
        if os.geteuid() == 0:
            cmd += ["-u", "postfix"]  # required when run as root
        cmd += [self.listen, str(self.backlog)]
        with open(self.log_path, "wb") as err:
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err
            )
        self._thread = threading.Thread(target=self._read, daemon=True, name="smtp-sink")
        self._thread.start()
        _wait_listening(self.listen, self._proc, 10.0, self.log_path)

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        buf = b""
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                return
            now = time.monotonic()
            buf += chunk
            records, _, buf = buf.rpartition(b"\r")
            counters = parse_sink_counters(records.decode("ascii", "replace"))
            if counters:
                with self._cond:
                    if counters[-1].messages != self._messages:
                        self._messages = counters[-1].messages
                        self._reached.append((self._messages, now))
                    self._cond.notify_all()

    @property
    def messages(self) -> int:
        with self._cond:
            return self._messages

    def wait_for(
        self,
        count: int,
        timeout: float,
        stall_s: float = STALL_S,
        abort: Callable[[], bool] | None = None,
    ) -> float | None:
        """Monotonic time at which the sink first counted `count` messages.

        None on timeout, when no message arrived for stall_s (a stuck pipeline should not
        use up the whole time budget), or as soon as abort() is true.
        """
        now = time.monotonic()
        deadline = now + timeout
        with self._cond:
            last_progress = max(now, self._reached[-1][1] if self._reached else now)
            while self._messages < count:
                now = time.monotonic()
                if self._reached:
                    last_progress = max(last_progress, self._reached[-1][1])
                if (
                    now >= deadline
                    or now - last_progress > stall_s
                    or (self._proc is not None and self._proc.poll() is not None)
                    or (abort is not None and abort())
                ):
                    return None
                self._cond.wait(min(deadline - now, 0.5))
            return next(t for c, t in self._reached if c >= count)

    def count_at(self, when: float) -> int:
        """How many messages the sink had counted at monotonic time `when`."""
        with self._cond:
            return max((c for c, t in self._reached if t <= when), default=0)

    def stop(self) -> None:
        if self._proc is not None:
            stop_pid(self._proc)
            if self._thread is not None:
                self._thread.join(5)
            if self._proc.stdout is not None:
                self._proc.stdout.close()


def _wait_listening(
    hostport: str, proc: subprocess.Popen[bytes], timeout: float, log: Path
) -> None:
    import socket

    host, port = split_hostport(hostport)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited {proc.returncode}: {tail(log)}")
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {hostport} after {timeout:.0f}s")


@dataclass
class SourceRun:
    """One smtp-source run: when it started and ended, how many DATA it completed."""

    started: float
    ended: float
    returncode: int
    completed: int
    stderr: str = field(repr=False, default="")

    @property
    def seconds(self) -> float:
        return self.ended - self.started


@dataclass(frozen=True)
class Workload:
    """What smtp-source sends: count messages of size body bytes over sessions connections."""

    count: int
    sessions: int
    size: int
    reuse: bool  # sessions keep their connection (-d) instead of one connection per message
    sender: str = "from@example.com"
    recipient: str = "to@example.net"


def source_command(target: str, work: Workload) -> list[str]:
    cmd = [SMTP_SOURCE, "-c", "-l", str(work.size), "-m", str(work.count)]
    cmd += ["-s", str(work.sessions)]
    if work.reuse:
        cmd.append("-d")
    return [*cmd, "-M", "bench.example.com", "-f", work.sender, "-t", work.recipient, target]


class SourceProcess:
    """smtp-source running in the background; a waiter thread stamps the moment it exits.

    Output goes to temp files (a pipe could fill up and stall it); `kill` stops it by pid.
    """

    def __init__(self, cmd: list[str]) -> None:
        self.cmd = cmd
        # Closed in result() or kill(), once the process is done with them.
        self._out = tempfile.TemporaryFile()  # noqa: SIM115
        self._err = tempfile.TemporaryFile()  # noqa: SIM115
        self.started = time.monotonic()
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=self._out, stderr=self._err
        )
        self._ended: float | None = None
        self._thread = threading.Thread(target=self._wait, daemon=True, name="smtp-source")
        self._thread.start()

    def _wait(self) -> None:
        self._proc.wait()
        self._ended = time.monotonic()

    def result(self, timeout: float) -> SourceRun:
        """Wait (bounded) for the end; killed by pid past timeout."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            self.kill()
            self._thread.join(10)
        self._out.seek(0)
        self._err.seek(0)
        out = self._out.read().decode("ascii", "replace")
        err = self._err.read().decode("utf-8", "replace").strip()
        self._out.close()
        self._err.close()
        ended = self._ended if self._ended is not None else time.monotonic()
        code = self._proc.returncode if self._proc.returncode is not None else -9
        return SourceRun(self.started, ended, code, parse_source_counter(out), err)

    @property
    def failed(self) -> bool:
        """It exited with an error (smtp-source stops at the first unexpected reply)."""
        return self._proc.poll() not in (None, 0)

    def kill(self) -> None:
        """Stop it by pid if it still runs; release its output files."""
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(10)
        self._out.close()
        self._err.close()


def run_source(cmd: list[str], timeout: float) -> SourceRun:
    """Run smtp-source to the end (killed by pid past timeout)."""
    source = SourceProcess(cmd)
    try:
        return source.result(timeout)
    finally:
        source.kill()


@dataclass
class PeerResult:
    """An end-to-end run: its rate, smtp-source's injection rate, what got in and out."""

    e2e_msgs_per_s: float | None
    inject_msgs_per_s: float | None
    delivered: int  # counted at the sink
    seconds: float | None
    error: str | None = None
    injected: int = 0  # DATA completed by smtp-source


def measure_relay_e2e(sink: SmtpSink, target: str, work: Workload, timeout: float) -> PeerResult:
    """Inject work.count messages at target with smtp-source; time until all reach the sink."""
    count = work.count
    base = sink.messages
    source = SourceProcess(source_command(target, work))
    try:
        last = sink.wait_for(base + count, timeout, abort=lambda: source.failed)
        run = source.result(timeout)
    finally:
        source.kill()  # interrupted: never leave it running
    started = source.started
    inject = rate(run.completed, run.seconds)
    delivered = sink.messages - base
    if run.returncode != 0:
        why = f"smtp-source failed: {run.stderr[-500:]}"
        return PeerResult(None, inject, delivered, None, why, run.completed)
    if last is None:
        why = f"only {delivered}/{count} reached the sink"
        return PeerResult(None, inject, delivered, None, why, run.completed)
    seconds = last - started
    return PeerResult(rate(count, seconds), inject, delivered, round(seconds, 3), None, count)
