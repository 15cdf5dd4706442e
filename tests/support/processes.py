"""The product's processes run by the tests: started with their output in a log, probed over
HTTP, and stopped by pid."""

from __future__ import annotations

import os
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start `args` with stdout and stderr appended to `log`."""
    with log.open("ab") as out:
        return subprocess.Popen(args, env=env, stdout=out, stderr=out)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, wait_s: float = 30) -> None:
    """Send `sig` to a process that still runs, and kill it if it has not ended in `wait_s`."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def get(url: str) -> tuple[int, bytes]:
    """(status, body) of a GET; status 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()
    except OSError:
        return 0, b""


def tails(logs: list[Path], chars: int = 3000) -> str:
    """The end of each log that exists, for a failure message."""
    return "\n".join(f"--- {p.name}\n{p.read_text()[-chars:]}" for p in logs if p.exists())


def product_env(bootstrap: str, **settings: str) -> dict[str, str]:
    """The environment of a product process: this one's without any MAILSLUICE_ setting, then
    the broker at `bootstrap`, INFO logs and `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSLUICE_")}
    env.update(MAILSLUICE_KAFKA_BOOTSTRAP=bootstrap, MAILSLUICE_LOG_LEVEL="INFO", **settings)
    return env
