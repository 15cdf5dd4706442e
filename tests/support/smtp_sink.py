"""Postfix's smtp-sink as a test server in the background (its own process, stopped by pid)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

from support.eventually import eventually_sync
from support.loopback import free_port, next_loopback


class SmtpSink:
    """Postfix's smtp-sink on host:port in the background, stopped by its pid.

    `extra_args` are smtp-sink flags, e.g. ["-w", "2"] (delay before DATA reply),
    ["-r", "rcpt"] (reject RCPT with 4xx), ["-f", "data"] (hard-reject DATA), ["-Q", "mail"].
    With `dump=True`, smtp-sink saves each message as a file in `dump_dir` (its -d format);
    cleanup() removes that directory.
    """

    BINARY = "/usr/sbin/smtp-sink"

    def __init__(
        self,
        host: str | None = None,
        port: int = 0,
        extra_args: list[str] | None = None,
        dump: bool = False,
        backlog: int = 100,
    ) -> None:
        self.host = host or next_loopback()
        self.port = port or free_port(self.host)
        self.extra_args = list(extra_args or [])
        self.dump = dump
        self.dump_dir: Path | None = None
        self.backlog = backlog
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout: float = 10.0) -> SmtpSink:
        cmd = [self.BINARY, "-c"]
        if os.geteuid() == 0:
            cmd += ["-u", "nobody"]
        if self.dump and self.dump_dir is None:
            # Not under pytest's tmp_path: its 0700 parents keep "nobody" out.
            self.dump_dir = Path(tempfile.mkdtemp(prefix="smtp-sink-"))
            os.chmod(self.dump_dir, 0o777)
        if self.dump_dir is not None:
            cmd += ["-d", f"{self.dump_dir}/msg-"]  # + a random hex suffix
        cmd += [*self.extra_args, self.address, str(self.backlog)]
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            eventually_sync(self._greets, within=timeout, what=f"smtp-sink on {self.address}")
        except BaseException:
            self.stop()
            raise
        return self

    def _greets(self) -> bool:
        assert self._proc is not None
        if self._proc.poll() is not None:
            err = self._proc.stderr.read().decode() if self._proc.stderr else ""
            raise RuntimeError(f"smtp-sink exited: {err}")
        try:
            with socket.create_connection((self.host, self.port), timeout=1) as sock:
                sock.recv(512)
        except OSError:
            return False
        return True

    def stop(self, timeout: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        if proc.stderr:
            proc.stderr.close()

    def cleanup(self) -> None:
        """Stop, and remove the dump directory."""
        self.stop()
        if self.dump_dir is not None:
            shutil.rmtree(self.dump_dir, ignore_errors=True)
            self.dump_dir = None

    def dumped_messages(self) -> list[bytes]:
        if self.dump_dir is None:
            return []
        return [p.read_bytes() for p in sorted(self.dump_dir.iterdir()) if p.is_file()]

    def __enter__(self) -> SmtpSink:
        return self.start() if self._proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
