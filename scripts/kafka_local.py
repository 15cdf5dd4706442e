#!/usr/bin/env python3
"""Run a real single-node Apache Kafka (KRaft, combined broker+controller) on 127.0.0.1.

The broker's jars come from Maven Central through scripts/kafka/pom.xml and are cached in
<repo>/.cache/kafka/<version>/libs; scripts/kafka_jars.py does that part. Standard library only,
so any python3 can run it:

    python3 scripts/kafka_local.py fetch
    python3 scripts/kafka_local.py start --dir run/kafka --port 19092
    python3 scripts/kafka_local.py status --dir run/kafka
    python3 scripts/kafka_local.py stop --dir run/kafka

With --nodes N, `start` runs an N-node cluster instead (scripts/kafka_cluster.py says more);
`stop`, `status`, `kill --node I` and `start --node I` then act on that cluster or one node.

The functions are importable too (tests/support/kafka_broker.py uses them). The broker is
always found by the pid in DIR/kafka.pid, never by process name.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

# Run as a script or loaded by path (tests/support/kafka_broker.py): either way localproc,
# kafka_jars and kafka_config are sibling files, not installed modules.
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
import localproc
from kafka_config import MAX_MESSAGE_BYTES, log4j_properties, server_properties
from kafka_jars import (
    CACHE_ROOT,
    POM,
    REPO_ROOT,
    KafkaLocalError,
    fetch,
    kafka_version,
    libs_dir,
)
from localproc import free_port

# The jars (Maven fetch, cache) come from kafka_jars and the broker's settings from kafka_config;
# their names are re-exported here because tests/support/kafka_broker.py and `kafka_local.py fetch`
# reach them through this module.
__all__ = [
    "CACHE_ROOT",
    "HEAP_OPTS",
    "MAX_MESSAGE_BYTES",
    "POM",
    "REPO_ROOT",
    "STOP_TIMEOUT_S",
    "BrokerState",
    "KafkaLocalError",
    "broker_ready",
    "fetch",
    "free_port",
    "kafka_version",
    "libs_dir",
    "main",
    "metadata_node_ids",
    "read_pid",
    "read_state",
    "running_pid",
    "start",
    "status",
    "stop",
]

HEAP_OPTS = ("-Xms256m", "-Xmx512m")
STOP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class BrokerState:
    """What DIR/kafka.json remembers, so a restart reuses ports and data."""

    port: int
    controller_port: int
    version: str
    host: str = "127.0.0.1"

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"


def _random_cluster_id() -> str:
    # Same shape as Kafka's Uuid.randomUuid(): URL-safe base64 of 16 bytes, no padding,
    # not starting with '-' (it would read as a command-line flag).
    while True:
        cid = base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


def _write_state(directory: Path, state: BrokerState) -> None:
    (directory / "kafka.json").write_text(
        json.dumps(
            {
                "port": state.port,
                "controller_port": state.controller_port,
                "version": state.version,
                "host": state.host,
            }
        )
    )


def read_state(directory: Path) -> BrokerState | None:
    try:
        raw = json.loads((Path(directory) / "kafka.json").read_text())
    except FileNotFoundError:
        return None
    host = str(raw.get("host", "127.0.0.1"))
    return BrokerState(int(raw["port"]), int(raw["controller_port"]), str(raw["version"]), host)


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


def metadata_node_ids(port: int, timeout: float, host: str = "127.0.0.1") -> list[int]:
    """Send a Metadata v4 request (no topics) to one node; return the ids of the live brokers
    it lists (registered and unfenced)."""
    client_id = b"kafka_local"
    body = struct.pack(">hhih", 3, 4, 1, len(client_id)) + client_id
    body += struct.pack(">ib", 0, 0)  # topics: empty array; allow_auto_topic_creation: false
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(struct.pack(">i", len(body)) + body)
        size = struct.unpack(">i", _recv_exact(sock, 4))[0]
        resp = _recv_exact(sock, size)
    # correlation_id int32, throttle_time_ms int32, brokers array count int32
    correlation, _, count = struct.unpack(">iii", resp[:12])
    if correlation != 1:
        raise KafkaLocalError("unexpected metadata response")
    ids, at = [], 12
    for _ in range(count):
        # node_id int32, host string, port int32, rack nullable string
        (node_id,) = struct.unpack_from(">i", resp, at)
        (host_len,) = struct.unpack_from(">h", resp, at + 4)
        at += 6 + host_len + 4
        (rack_len,) = struct.unpack_from(">h", resp, at)
        at += 2 + max(rack_len, 0)
        ids.append(int(node_id))
    return ids


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def broker_ready(port: int, timeout: float = 2.0, host: str = "127.0.0.1") -> bool:
    """True when the broker answers metadata and lists itself (registered and unfenced)."""
    try:
        return len(metadata_node_ids(port, timeout, host)) >= 1
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


def _broker_argv(directory: Path, libs: Path) -> list[str]:
    return [
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


def start(
    directory: Path | str,
    port: int | None = None,
    controller_port: int | None = None,
    timeout: float = 90.0,
    version: str | None = None,
    *,
    host: str | None = None,
    overrides: dict[str, str] | None = None,
) -> BrokerState:
    """Start (or restart, keeping data) the broker in DIR; wait until it serves metadata.
    `host`: the address it binds and advertises (default: as last time, else 127.0.0.1);
    `overrides`: server properties replaced or added (kafka_config.server_properties)."""
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
    host = host or (previous.host if previous else "127.0.0.1")
    state = BrokerState(port, controller_port, version or kafka_version(), host)
    pid = running_pid(directory)
    if pid is not None:
        if previous == state and broker_ready(port, host=host):
            return state
        raise KafkaLocalError(f"a broker already runs from {directory} (pid {pid})")
    libs = fetch(state.version, quiet=True)
    (directory / "server.properties").write_text(
        server_properties(
            directory, state.port, state.controller_port, host=host, overrides=overrides
        )
    )
    (directory / "log4j2.properties").write_text(log4j_properties(directory))
    _write_state(directory, state)
    _format_storage(directory, libs, _random_cluster_id())
    cmd = _broker_argv(directory, libs)
    proc = localproc.spawn(cmd, directory / "logs" / "kafka.out", _pid_file(directory), directory)
    outcome = localproc.wait_ready(proc.pid, lambda: broker_ready(port, host=host), timeout)
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
    ready = bool(pid and state and broker_ready(state.port, host=state.host))
    return pid, state, ready


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help="download the broker jars into .cache/kafka (once)")
    p_start = sub.add_parser("start", help="start a broker (or a cluster, or one of its nodes)")
    p_start.add_argument("--dir", required=True, type=Path)
    p_start.add_argument("--port", type=int, help="client port (default: as last time)")
    p_start.add_argument("--controller-port", type=int, help="default: as last time, or free")
    p_start.add_argument("--nodes", type=int, help="start a cluster of N nodes (see kafka_cluster)")
    p_start.add_argument("--node", type=int, help="start only node I of the cluster in DIR")
    p_start.add_argument("--timeout", type=float, default=90.0)
    p_start.add_argument("--host", help="address to bind and advertise (default 127.0.0.1)")
    for name, text in (
        ("stop", "stop the broker or cluster started from DIR (or its node I)"),
        ("status", "is the broker or cluster from DIR running?"),
        ("kill", "SIGKILL node I of the cluster in DIR"),
    ):
        command = sub.add_parser(name, help=text)
        command.add_argument("--dir", required=True, type=Path)
        command.add_argument("--node", type=int, required=name == "kill")
    return parser


def _cluster_command(args: argparse.Namespace) -> int:
    import kafka_cluster

    if args.command == "start" and args.node is None:
        state = kafka_cluster.start_cluster(args.dir, args.nodes or 3, args.port, args.timeout)
        print(state.bootstrap)
    elif args.command == "start":
        state = kafka_cluster.start_nodes(args.dir, [args.node], args.timeout)
        print(state.node(args.node).bootstrap)
    elif args.command == "kill":
        print("killed" if kafka_cluster.kill_node(args.dir, args.node) else "not running")
    elif args.command == "stop" and args.node is not None:
        print("stopped" if kafka_cluster.stop_node(args.dir, args.node) else "not running")
    elif args.command == "stop":
        print(f"stopped {kafka_cluster.stop_cluster(args.dir)} nodes")
    else:
        nodes = kafka_cluster.cluster_status(args.dir)
        for node, pid, ready in nodes:
            shown = f"pid={pid} ready={'yes' if ready else 'no'}" if pid else "not running"
            print(f"node {node.index} {node.bootstrap} {shown}")
        return 0 if any(pid for _, pid, _ in nodes) else 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "fetch":
            print(fetch())
            return 0
        if getattr(args, "nodes", None) or _is_cluster(args.dir):
            return _cluster_command(args)
        if args.node is not None:
            raise KafkaLocalError(f"no cluster in {args.dir} (start one with --nodes N)")
        if args.command == "start":
            state = start(args.dir, args.port, args.controller_port, args.timeout, host=args.host)
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


def _is_cluster(directory: Path) -> bool:
    return (directory / "cluster.json").exists()


if __name__ == "__main__":
    sys.exit(main())
