"""Postfix-side tools for `make bench`: smtp-sink, smtp-source and a private Postfix relay.

The Postfix peer is a throwaway instance of Debian's postfix package: its own config directory,
queue directory and data directory under a temp dir, listening on a dedicated loopback address and
relaying everything to `smtp-sink`. Nothing under /etc/postfix is read or changed: as root,
`postfix -c DIR` needs no `alternate_config_directories` entry (Postfix only checks that list for
non-root callers). Every process is started and stopped by its pid; the instance is stopped with
`postfix -c DIR stop`, and its master pid and children are checked to be gone afterwards.

Standard library only; importable from tests (the parsers and `percentile` are pure).
"""

from __future__ import annotations

import contextlib
import math
import os
import pty
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SMTP_SINK = "/usr/sbin/smtp-sink"
SMTP_SOURCE = "/usr/sbin/smtp-source"
POSTFIX = "/usr/sbin/postfix"
SINK_COUNTER_RE = re.compile(r"sess=(\d+)\s+quit=(\d+)\s+mesg=(\d+)")
STOP_TIMEOUT_S = 15.0
# A run gives up when the sink has counted nothing new for this long.
STALL_S = 20.0


# --------------------------------------------------------------------------- pure helpers


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


def split_hostport(hostport: str) -> tuple[str, int]:
    host, _, port = hostport.rpartition(":")
    return host, int(port)


# --------------------------------------------------------------------------- processes


def stop_pid(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM one child by its pid, SIGKILL it after timeout; always reaped."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


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
            raise RuntimeError(f"{proc.args!r} exited {proc.returncode}: {_tail(log)}")
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {hostport} after {timeout:.0f}s")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


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


# --------------------------------------------------------------------------- Postfix peer


def main_cf(base: Path, listen_ip: str, relay: str, concurrency: int) -> str:
    relay_host, relay_port = split_hostport(relay)
    settings = {
        "compatibility_level": "3.6",
        "queue_directory": base / "spool",
        "data_directory": base / "data",
        "mail_owner": "postfix",
        "setgid_group": "postdrop",
        # Linux lists only 127.0.0.1 on lo, and Postfix refuses other addresses here; the
        # smtpd line in master.cf binds the dedicated address explicitly.
        "inet_interfaces": "127.0.0.1",
        "inet_protocols": "ipv4",
        "smtp_bind_address": listen_ip,
        "myhostname": "postfix-peer.bench.invalid",
        "mydomain": "bench.invalid",
        "myorigin": "$myhostname",
        "mydestination": "",
        "relay_domains": "",
        "local_recipient_maps": "",
        "local_transport": "error:5.1.1 local delivery disabled",
        "alias_maps": "",
        "alias_database": "",
        "mynetworks": "127.0.0.0/8",
        "relayhost": f"[{relay_host}]:{relay_port}",
        "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
        "smtpd_peername_lookup": "no",
        "smtpd_tls_security_level": "none",
        "smtp_tls_security_level": "none",
        "default_destination_concurrency_limit": concurrency,
        "smtp_destination_concurrency_limit": concurrency,
        "default_process_limit": 100,
        "maillog_file": base / "log" / "maillog",
        "maillog_file_prefixes": base,
        "biff": "no",
        "append_dot_mydomain": "no",
        "smtputf8_enable": "no",
        "notify_classes": "",
    }
    return "".join(f"{key} = {value}\n" for key, value in settings.items())


def master_cf(listen: str) -> str:
    # chroot off everywhere: the private queue has no chroot files (resolv.conf etc.).
    rows = [
        (listen, "inet", "n", "-", "n", "-", "-", "smtpd"),
        ("pickup", "unix", "n", "-", "n", "60", "1", "pickup"),
        ("cleanup", "unix", "n", "-", "n", "-", "0", "cleanup"),
        ("qmgr", "unix", "n", "-", "n", "300", "1", "qmgr"),
        ("rewrite", "unix", "-", "-", "n", "-", "-", "trivial-rewrite"),
        ("bounce", "unix", "-", "-", "n", "-", "0", "bounce"),
        ("defer", "unix", "-", "-", "n", "-", "0", "bounce"),
        ("trace", "unix", "-", "-", "n", "-", "0", "bounce"),
        ("verify", "unix", "-", "-", "n", "-", "1", "verify"),
        ("flush", "unix", "n", "-", "n", "1000?", "0", "flush"),
        ("proxymap", "unix", "-", "-", "n", "-", "-", "proxymap"),
        ("proxywrite", "unix", "-", "-", "n", "-", "1", "proxymap"),
        ("smtp", "unix", "-", "-", "n", "-", "-", "smtp"),
        ("relay", "unix", "-", "-", "n", "-", "-", "smtp"),
        ("showq", "unix", "n", "-", "n", "-", "-", "showq"),
        ("error", "unix", "-", "-", "n", "-", "-", "error"),
        ("retry", "unix", "-", "-", "n", "-", "-", "error"),
        ("discard", "unix", "-", "-", "n", "-", "-", "discard"),
        ("anvil", "unix", "-", "-", "n", "-", "1", "anvil"),
        ("scache", "unix", "-", "-", "n", "-", "1", "scache"),
        ("postlog", "unix-dgram", "n", "-", "n", "-", "1", "postlogd"),
    ]
    return "".join(" ".join(row) + "\n" for row in rows)


class PostfixPeer:
    """A private Postfix relay: listen -> relay (smtp-sink), all state under `base`."""

    def __init__(self, base: Path, listen: str, relay: str, concurrency: int = 20) -> None:
        self.base = base
        self.listen = listen
        self.relay = relay
        self.concurrency = concurrency
        self.config_dir = base / "etc"
        self._master_pid: int | None = None

    @property
    def master_pid(self) -> int | None:
        return self._master_pid

    def _postfix(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [POSTFIX, "-c", str(self.config_dir), *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )

    def write_config(self) -> None:
        for sub in ("etc", "spool", "data", "log"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.base, 0o755)
        # The master opens data/master.lock as the postfix user: every parent must be searchable.
        closed = [p for p in self.base.parents if not p.stat().st_mode & 0o001]
        if closed:
            raise RuntimeError(f"the postfix user cannot reach {self.base}: {closed[0]} is not o+x")
        listen_ip, _ = split_hostport(self.listen)
        (self.config_dir / "main.cf").write_text(
            main_cf(self.base, listen_ip, self.relay, self.concurrency)
        )
        (self.config_dir / "master.cf").write_text(master_cf(self.listen))
        if os.geteuid() == 0:
            shutil.chown(self.base / "data", "postfix", "postfix")

    def start(self) -> None:
        if not Path(POSTFIX).exists():
            raise RuntimeError(f"{POSTFIX} not found: install Debian's postfix package")
        self.write_config()
        proc = self._postfix("start")
        if proc.returncode != 0:
            raise RuntimeError(
                f"postfix start failed ({proc.returncode}): {proc.stderr.strip()}"
                f"{self.diagnose()}\n{_tail(self.base / 'log' / 'maillog')}"
            )
        pid_file = self.base / "spool" / "pid" / "master.pid"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self._master_pid is None:
            try:
                self._master_pid = int(pid_file.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                time.sleep(0.05)
        if self._master_pid is None:
            raise RuntimeError(f"postfix started but wrote no {pid_file}")
        host, port = split_hostport(self.listen)
        import socket

        while time.monotonic() < deadline:
            try:
                with socket.create_connection((host, port), timeout=1.0):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"postfix smtpd not listening on {self.listen}")

    def diagnose(self) -> str:
        """`postfix check` with stderr on a pty: the postfix command only prints to a tty."""
        main, child = pty.openpty()
        try:
            proc = subprocess.run(
                [POSTFIX, "-c", str(self.config_dir), "check"],
                stdin=subprocess.DEVNULL,
                stdout=child,
                stderr=child,
                check=False,
                timeout=30,
            )
            os.close(child)
            child = -1
            out = b""
            while True:
                try:
                    chunk = os.read(main, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
        finally:
            os.close(main)
            if child >= 0:
                os.close(child)
        text = out.decode("utf-8", "replace").strip()
        return f"; postfix check exited {proc.returncode}: {text}" if text else ""

    def maillog_tail(self, lines: int = 20) -> str:
        return _tail(self.base / "log" / "maillog", lines)

    def stop(self) -> list[str]:
        """`postfix -c DIR stop`, then make sure the master and its children are gone.

        Returns a list of problems (empty when the stop was clean).
        """
        problems: list[str] = []
        master = self._master_pid
        if master is None:
            return problems
        children = children_of(master)
        proc = self._postfix("stop", timeout=30)
        if proc.returncode != 0:
            problems.append(f"postfix stop exited {proc.returncode}: {proc.stderr.strip()}")
        deadline = time.monotonic() + STOP_TIMEOUT_S
        pids = [master, *children]
        while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
            time.sleep(0.1)
        for pid in pids:
            if pid_alive(pid):
                problems.append(f"postfix process {pid} survived stop; SIGKILL")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self._master_pid = None
        return problems


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
