"""A real single-node Kafka broker for tests, driven through scripts/kafka_local.py."""

from __future__ import annotations

import atexit
import importlib.util
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol, TypeVar

from mailsluice.kafka.settings import KafkaSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 90.0


def _load_kafka_local() -> ModuleType:
    # scripts/ is not a package; load the stdlib-only script by path, once.
    name = "kafka_local"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / "kafka_local.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


kafka_local = _load_kafka_local()


class KafkaBroker:
    """One broker process in `directory`; stop() and start() keep its data and ports."""

    def __init__(self, directory: Path, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.directory = Path(directory)
        self.host = host  # a local cluster's pods reach a broker on the node's bridge address
        self.port = port or kafka_local.free_port()
        self.controller_port = kafka_local.free_port()
        self.last_start_seconds: float | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return kafka_local.running_pid(self.directory) is not None

    @property
    def pid(self) -> int | None:
        pid = kafka_local.running_pid(self.directory)
        return None if pid is None else int(pid)

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start (or restart) the broker and wait until it serves metadata."""
        began = time.monotonic()
        kafka_local.start(
            self.directory, self.port, self.controller_port, timeout=timeout, host=self.host
        )
        self.last_start_seconds = time.monotonic() - began

    def stop(self) -> None:
        """SIGTERM by pid (SIGKILL after 30 s); idempotent."""
        kafka_local.stop(self.directory)

    def ensure_running(self) -> None:
        if not (self.running and kafka_local.broker_ready(self.port, host=self.host)):
            self.start()

    def settings(self, **overrides: Any) -> KafkaSettings:
        """KafkaSettings pointing at this broker (overrides win, e.g. queue_partitions=2)."""
        overrides.setdefault("bootstrap", self.bootstrap)
        return KafkaSettings(**overrides)


class _Startable(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


S = TypeVar("S", bound=_Startable)


def kafka_local_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`python3 scripts/kafka_local.py ARGS` as a user runs it."""
    return subprocess.run(
        [sys.executable, str(Path(kafka_local.__file__)), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )


def start_on_free_ports(make: Callable[[int], S], what: str) -> S:
    """Fetch the jars if needed, then start make(attempt) (a broker or a cluster on free ports),
    stopped at interpreter exit at the latest."""
    kafka_local.fetch(quiet=True)
    error: Exception | None = None
    # Free ports are picked before Java binds them: on a clash, try again on fresh ports.
    for attempt in range(3):
        server = make(attempt)
        # A safety net if the fixture's finalizer never runs (e.g. KeyboardInterrupt).
        atexit.register(server.stop)
        try:
            server.start()
        except kafka_local.KafkaLocalError as exc:
            server.stop()
            error = exc
            if "Address already in use" not in str(exc):
                break
            continue
        return server
    raise RuntimeError(f"could not start {what}: {error}")


def start_broker(directory: Path, host: str = "127.0.0.1") -> KafkaBroker:
    """A broker on free ports in DIR/broker<attempt>, bound to `host`."""
    return start_on_free_ports(
        lambda n: KafkaBroker(Path(directory) / f"broker{n}", host=host), "Kafka"
    )
