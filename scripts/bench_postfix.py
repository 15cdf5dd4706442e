"""The Postfix peer for `make bench`: a private Postfix relay in front of `smtp-sink`.

The Postfix peer is a throwaway instance of Debian's postfix package: its own config directory,
queue directory and data directory under a temp dir, listening on a dedicated loopback address and
relaying everything to `smtp-sink`. Nothing under /etc/postfix is changed (only the package's
postfix-files metadata is read): as root, `postfix -c DIR` needs no `alternate_config_directories`
entry (Postfix checks that list only for non-root callers), so the bench needs root for the peer.
Every process is started and stopped by its pid; the instance is stopped with `postfix -c DIR
stop`, and its master pid and children are checked to be gone afterwards.

Standard library only; importable from tests (`main_cf` and `master_cf` are pure).
"""

from __future__ import annotations

import contextlib
import os
import pty
import shutil
import signal
import subprocess
import time
from pathlib import Path

from bench_tools import STOP_TIMEOUT_S, children_of, pid_alive, split_hostport, tail

POSTFIX = "/usr/sbin/postfix"


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
                f"{self.diagnose()}\n{tail(self.base / 'log' / 'maillog')}"
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
        return tail(self.base / "log" / "maillog", lines)

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
