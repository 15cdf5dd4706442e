"""The processes of the fault run (scripts/chaos.py): `mailsluice ingest` and the delivery
workers as restartable children signalled by pid, the broker behind a small interface (a
throwaway kafka_local broker here, the test session's broker in the suite, a cluster later),
and the environment they all share."""

from __future__ import annotations

import asyncio
import os
import signal
import urllib.error
import urllib.request
from pathlib import Path
from typing import Protocol

import kafka_local
from bench_ours import Service
from bench_tools import stop_pid, tail

READY_TIMEOUT_S = 120.0


class BrokerControl(Protocol):
    """What the run needs of Kafka: where it is, and a graceful stop and start (same data).
    tests/support/kafka_broker.KafkaBroker is one; a three-broker cluster can be another."""

    @property
    def bootstrap(self) -> str: ...

    def stop(self) -> None: ...

    def start(self) -> None: ...


class LocalBroker:
    """A kafka_local broker in `directory` on `port` (the script's own, for `make chaos`)."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or kafka_local.free_port()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        kafka_local.start(self.directory, port=self.port)

    def stop(self) -> None:
        kafka_local.stop(self.directory)


def get(url: str) -> tuple[int, str]:
    """(status, body) of a GET; status 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode(errors="replace")
    except OSError:
        return 0, ""


class Proc(Service):
    """One `mailsluice` subcommand (bench_ours.Service): started and restarted with its output
    appended to one log, ready when /readyz answers 200, signalled only by its pid. `lock` is
    held while a fault or a liveness restart handles it, so the two never act on it at once."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], work: Path) -> None:
        super().__init__(name, argv, env, work)
        variable = "INGEST" if argv[0] == "ingest" else "DELIVERY"
        self.http_port = int(env[f"MAILSLUICE_{variable}_HTTP_PORT"])
        self.up_since_start = False  # ready since its last start
        self.starts = 0
        self.lock = asyncio.Lock()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _up(self, timeout: float) -> None:
        self.up_since_start = False
        self.starts += 1
        self.start(self.url("/readyz"), timeout)
        self.up_since_start = True

    async def up(self, ready_within_s: float = READY_TIMEOUT_S) -> None:
        """Start it and wait until it is ready."""
        await asyncio.to_thread(self._up, ready_within_s)

    async def signal(self, sig: int, wait_s: float = 40.0) -> None:
        """Send `sig` by pid and wait for the exit (SIGKILL after `wait_s`)."""
        if self.proc is None:
            return
        self.up_since_start = False
        if sig == signal.SIGTERM:
            await asyncio.to_thread(stop_pid, self.proc, wait_s)
        else:
            if self.proc.poll() is None:
                self.proc.send_signal(sig)
            await asyncio.to_thread(self.proc.wait, wait_s)

    def tail(self, lines: int = 15) -> str:
        return tail(self.log_path, lines)


def pipeline_env(bootstrap: str, nameserver: str, mx: str) -> dict[str, str]:
    """Settings every process of the run shares: this environment without MAILSLUICE_
    settings, the broker, a local DNS server (nothing leaves the machine) and the MX."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSLUICE_")}
    env.update(
        MAILSLUICE_KAFKA_BOOTSTRAP=bootstrap,
        MAILSLUICE_DNS_NAMESERVERS=nameserver,
        MAILSLUICE_LOG_JSON_FORMAT="false",
        MAILSLUICE_LOG_LEVEL="INFO",
        MAILSLUICE_OUTBOUND_STATIC_ROUTES=f"*={mx}",
        MAILSLUICE_OUTBOUND_ALLOW_PRIVATE_DESTINATIONS="true",
        MAILSLUICE_OUTBOUND_TLS_POLICY="none",
        MAILSLUICE_OUTBOUND_EHLO_NAME="delivery.chaos.invalid",
        MAILSLUICE_DELIVERY_BOUNCES_ENABLED="false",  # the run's sender has no mailbox
        # Durability is measured, not learning: the limits as configured, no slow start
        # (which would make the drain time the learning's, at 12/min per destination).
        MAILSLUICE_SHAPING_POOL_OVERRIDES='{"defaults": {"adaptive": false}}',
    )
    return env


def ingest_env(
    base: dict[str, str], pool: str, smtp_port: int, publish_timeout_s: float
) -> dict[str, str]:
    return {
        **base,
        "MAILSLUICE_INGEST_LISTEN_HOST": "127.0.0.1",
        "MAILSLUICE_INGEST_LISTEN_PORT": str(smtp_port),
        "MAILSLUICE_INGEST_HTTP_PORT": str(kafka_local.free_port()),
        "MAILSLUICE_INGEST_HOSTNAME": "ingest.chaos.invalid",
        "MAILSLUICE_INGEST_GREET_PAUSE_S": "0",
        "MAILSLUICE_INGEST_VERIFY_DOMAINS": "false",
        "MAILSLUICE_INGEST_DEFAULT_POOL": pool,
        "MAILSLUICE_INGEST_TRUSTED_POOLS": pool,
        "MAILSLUICE_INGEST_PUBLISH_TIMEOUT_S": str(publish_timeout_s),
        "MAILSLUICE_INGEST_SHUTDOWN_GRACE_S": "2",
    }


def worker_env(base: dict[str, str], pool: str, n: int, stall_s: float) -> dict[str, str]:
    """Worker `n`'s settings; its group instance id survives its restarts, as a pod's name does
    (the chart sets the pod's name)."""
    return {
        **base,
        "MAILSLUICE_KAFKA_GROUP_INSTANCE_ID": f"{pool}-worker-{n}",
        "MAILSLUICE_DELIVERY_POOL": pool,
        "MAILSLUICE_DELIVERY_HTTP_PORT": str(kafka_local.free_port()),
        "MAILSLUICE_DELIVERY_STALL_S": str(stall_s),
    }
