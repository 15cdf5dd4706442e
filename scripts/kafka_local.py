#!/usr/bin/env python3
"""Run a real single-node Apache Kafka (KRaft, combined broker+controller) on 127.0.0.1.

The broker's jars come from Maven Central through scripts/kafka/pom.xml and are cached in
<repo>/.cache/kafka/<version>/libs. Standard library only, so any python3 can run it:

    python3 scripts/kafka_local.py fetch
    python3 scripts/kafka_local.py start --dir run/kafka --port 19092
    python3 scripts/kafka_local.py status --dir run/kafka
    python3 scripts/kafka_local.py stop --dir run/kafka

The functions are importable too (tests/support/kafka_broker.py uses them). The broker is
always found by the pid in DIR/kafka.pid, never by process name.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

# Run as a script or loaded by path (tests/support/kafka_broker.py): either way localproc is a
# sibling file, not an installed module.
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
import localproc
from localproc import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
POM = REPO_ROOT / "scripts" / "kafka" / "pom.xml"
CACHE_ROOT = REPO_ROOT / ".cache" / "kafka"
HEAP_OPTS = ("-Xms256m", "-Xmx512m")
# 40 MB messages plus batch/record overhead.
MAX_MESSAGE_BYTES = 50 * 1024 * 1024
STOP_TIMEOUT_S = 30.0


class KafkaLocalError(RuntimeError):
    """Fetching, starting or stopping the local broker failed."""


@dataclass(frozen=True)
class BrokerState:
    """What DIR/kafka.json remembers, so a restart reuses ports and data."""

    port: int
    controller_port: int
    version: str

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


def kafka_version() -> str:
    """The Kafka version pinned in scripts/kafka/pom.xml."""
    match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", POM.read_text())
    if not match:
        raise KafkaLocalError(f"no <kafka.version> in {POM}")
    return match.group(1).strip()


def libs_dir(version: str | None = None) -> Path:
    return CACHE_ROOT / (version or kafka_version()) / "libs"


def fetch(version: str | None = None, quiet: bool = False) -> Path:
    """Copy the broker's runtime jars into the cache (once); return the libs directory."""
    version = version or kafka_version()
    libs = libs_dir(version)
    if (libs / ".complete").exists():
        return libs
    mvn = shutil.which("mvn")
    if not mvn:
        raise KafkaLocalError("mvn not found: install Maven (Debian package 'maven')")
    staging = libs.with_name(f"libs.tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        mvn,
        "-q",
        "-B",
        "-f",
        str(POM),
        f"-Dkafka.version={version}",
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={staging}",
    ]
    if not quiet:
        print(f"fetching Kafka {version} jars into {libs}", file=sys.stderr)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
        shutil.rmtree(staging, ignore_errors=True)
        raise KafkaLocalError(f"mvn failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    (staging / ".complete").write_text(version + "\n")
    # Rename last, so a half-finished fetch is never taken for a complete one.
    try:
        staging.rename(libs)
    except OSError:
        # Another process (a parallel test run) finished first: keep its copy.
        shutil.rmtree(staging, ignore_errors=True)
        if not (libs / ".complete").exists():
            raise
    return libs


def _random_cluster_id() -> str:
    # Same shape as Kafka's Uuid.randomUuid(): URL-safe base64 of 16 bytes, no padding,
    # not starting with '-' (it would read as a command-line flag).
    while True:
        cid = base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


def _server_properties(directory: Path, state: BrokerState) -> str:
    p, c = state.port, state.controller_port
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{c}",
        "listeners": f"PLAINTEXT://127.0.0.1:{p},CONTROLLER://127.0.0.1:{c}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{p}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(directory / "data"),
        "num.network.threads": "2",
        "num.io.threads": "4",
        "num.recovery.threads.per.data.dir": "1",
        "num.partitions": "1",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "auto.create.topics.enable": "false",
        "delete.topic.enable": "true",
        "group.initial.rebalance.delay.ms": "0",
        # Internal topics: one replica, few partitions (fast first group join on 2 cores).
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "4",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "4",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "share.coordinator.state.topic.num.partitions": "1",
        # Large messages (up to 40 MB bodies).
        "message.max.bytes": str(MAX_MESSAGE_BYTES),
        "replica.fetch.max.bytes": str(MAX_MESSAGE_BYTES),
        "socket.request.max.bytes": str(2 * MAX_MESSAGE_BYTES),
        "log.segment.bytes": str(64 * 1024 * 1024),
        # Small retention: this is a throwaway broker.
        "log.retention.hours": "2",
        "log.retention.bytes": str(512 * 1024 * 1024),
        "log.retention.check.interval.ms": "60000",
        # The default 128 MB cleaner buffer is a quarter of our heap.
        "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
    }
    return "".join(f"{k}={v}\n" for k, v in props.items())


def _log4j_properties(directory: Path) -> str:
    log = directory / "logs" / "server.log"
    return f"""status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""


def _write_state(directory: Path, state: BrokerState) -> None:
    (directory / "kafka.json").write_text(
        json.dumps(
            {"port": state.port, "controller_port": state.controller_port, "version": state.version}
        )
    )


def read_state(directory: Path) -> BrokerState | None:
    try:
        raw = json.loads((Path(directory) / "kafka.json").read_text())
    except FileNotFoundError:
        return None
    return BrokerState(int(raw["port"]), int(raw["controller_port"]), str(raw["version"]))


def _pid_file(directory: Path) -> Path:
    return Path(directory) / "kafka.pid"


def read_pid(directory: Path) -> int | None:
    return localproc.read_pid(_pid_file(directory))


def _is_our_broker(pid: int, directory: Path) -> bool:
    """Guard against a recycled pid: the process must be kafka.Kafka on DIR's properties."""
    cmdline = localproc.cmdline(pid)
    props = str(Path(directory).resolve() / "server.properties").encode()
    return b"kafka.Kafka" in cmdline and props in cmdline


def running_pid(directory: Path) -> int | None:
    return localproc.running_pid(_pid_file(directory), lambda pid: _is_our_broker(pid, directory))


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if not java:
        raise KafkaLocalError("java not found: Kafka 4 needs a Java 17+ runtime")
    return java


def _format_storage(directory: Path, libs: Path, cluster_id: str) -> None:
    if (directory / "data" / "meta.properties").exists():
        return
    cmd = [
        _java(),
        "-Xmx256m",
        f"-Dlog4j2.configurationFile={directory / 'log4j2.properties'}",
        "-cp",
        f"{libs}/*",
        "kafka.tools.StorageTool",
        "format",
        "-t",
        cluster_id,
        "-c",
        str(directory / "server.properties"),
        "--ignore-formatted",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
    if proc.returncode != 0:
        raise KafkaLocalError(f"kafka storage format failed:\n{proc.stdout}\n{proc.stderr}")


def _metadata_brokers(port: int, timeout: float) -> int:
    """Send a Metadata v4 request (no topics); return how many live brokers it lists."""
    client_id = b"kafka_local"
    body = struct.pack(">hhih", 3, 4, 1, len(client_id)) + client_id
    body += struct.pack(">ib", 0, 0)  # topics: empty array; allow_auto_topic_creation: false
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(struct.pack(">i", len(body)) + body)
        size = struct.unpack(">i", _recv_exact(sock, 4))[0]
        resp = _recv_exact(sock, size)
    # correlation_id int32, throttle_time_ms int32, brokers array count int32
    correlation, _, count = struct.unpack(">iii", resp[:12])
    if correlation != 1:
        raise KafkaLocalError("unexpected metadata response")
    return int(count)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def broker_ready(port: int, timeout: float = 2.0) -> bool:
    """True when the broker answers metadata and lists itself (registered and unfenced)."""
    try:
        return _metadata_brokers(port, timeout) >= 1
    except (OSError, ConnectionError, struct.error, KafkaLocalError):
        return False


def _log_tail(directory: Path, lines: int = 40) -> str:
    out = []
    for name in ("kafka.out", "server.log"):
        path = directory / "logs" / name
        if path.exists():
            text = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path} ---\n" + "\n".join(text))
    return "\n".join(out)


def start(
    directory: Path | str,
    port: int | None = None,
    controller_port: int | None = None,
    timeout: float = 90.0,
    version: str | None = None,
) -> BrokerState:
    """Start (or restart, keeping data) the broker in DIR; wait until it serves metadata."""
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "logs").mkdir(exist_ok=True)
    previous = read_state(directory)
    if port is None:
        if previous is None:
            raise KafkaLocalError(f"no --port given and no earlier state in {directory}")
        port = previous.port
    if controller_port is None:
        controller_port = previous.controller_port if previous else free_port()
    state = BrokerState(port, controller_port, version or kafka_version())
    pid = running_pid(directory)
    if pid is not None:
        if previous == state and broker_ready(port):
            return state
        raise KafkaLocalError(f"a broker already runs from {directory} (pid {pid})")
    libs = fetch(state.version, quiet=True)
    (directory / "server.properties").write_text(_server_properties(directory, state))
    (directory / "log4j2.properties").write_text(_log4j_properties(directory))
    _write_state(directory, state)
    _format_storage(directory, libs, _random_cluster_id())
    cmd = [
        _java(),
        *HEAP_OPTS,
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true",
        f"-Dkafka.logs.dir={directory / 'logs'}",
        f"-Dlog4j2.configurationFile={directory / 'log4j2.properties'}",
        "-cp",
        f"{libs}/*",
        "kafka.Kafka",
        str(directory / "server.properties"),
    ]
    proc = localproc.spawn(cmd, directory / "logs" / "kafka.out", _pid_file(directory), directory)
    outcome = localproc.wait_ready(proc.pid, lambda: broker_ready(port), timeout)
    if outcome == "ready":
        return state
    if outcome == "exited":
        _pid_file(directory).unlink(missing_ok=True)
        raise KafkaLocalError(
            f"Kafka exited with {proc.returncode} during start\n{_log_tail(directory)}"
        )
    stop(directory)
    raise KafkaLocalError(f"Kafka not ready after {timeout:.0f}s\n{_log_tail(directory)}")


def stop(directory: Path | str, timeout: float = STOP_TIMEOUT_S) -> bool:
    """SIGTERM the broker by its pid file, SIGKILL that pid after timeout. True if it ran."""
    resolved = Path(directory).resolve()
    return localproc.stop(_pid_file(resolved), lambda pid: _is_our_broker(pid, resolved), timeout)


def status(directory: Path | str) -> tuple[int | None, BrokerState | None, bool]:
    """(pid or None, remembered state, answers metadata)."""
    directory = Path(directory).resolve()
    pid = running_pid(directory)
    state = read_state(directory)
    ready = bool(pid and state and broker_ready(state.port))
    return pid, state, ready


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help="download the broker jars into .cache/kafka (once)")
    p_start = sub.add_parser("start", help="start a broker in the background")
    p_start.add_argument("--dir", required=True, type=Path)
    p_start.add_argument("--port", type=int, help="client port (default: as last time)")
    p_start.add_argument("--controller-port", type=int, help="default: as last time, or free")
    p_start.add_argument("--timeout", type=float, default=90.0)
    p_stop = sub.add_parser("stop", help="stop the broker started from DIR")
    p_stop.add_argument("--dir", required=True, type=Path)
    p_status = sub.add_parser("status", help="is the broker from DIR running?")
    p_status.add_argument("--dir", required=True, type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            print(fetch())
        elif args.command == "start":
            state = start(args.dir, args.port, args.controller_port, args.timeout)
            print(state.bootstrap)
        elif args.command == "stop":
            print("stopped" if stop(args.dir) else "not running")
        else:
            pid, known, ready = status(args.dir)
            if pid is None:
                print("not running")
                return 1
            where = known.bootstrap if known else "?"
            print(f"running pid={pid} bootstrap={where} ready={'yes' if ready else 'no'}")
    except KafkaLocalError as exc:
        print(f"kafka_local: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
