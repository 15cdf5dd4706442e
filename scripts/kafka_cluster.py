"""A real N-node Apache Kafka cluster (KRaft) on 127.0.0.1, each node a combined
broker+controller and all of them voters of one controller quorum.

Every topic gets N replicas (at most 3) with min.insync.replicas 2 and no unclean leader
election, the settings production runs with (scripts/kafka_config.py). Node i (1-based) lives in
DIR/node<i>, with its own ports, data, logs and pid file, so it can be killed, stopped and
started on its own; DIR/cluster.json remembers the ports and the cluster id, so a restart
reuses both. Standard library only, driven through scripts/kafka_local.py:

    python3 scripts/kafka_local.py start --dir run/kafka3 --nodes 3
    python3 scripts/kafka_local.py status --dir run/kafka3
    python3 scripts/kafka_local.py kill --dir run/kafka3 --node 2    # SIGKILL node 2
    python3 scripts/kafka_local.py start --dir run/kafka3 --node 2   # start it again
    python3 scripts/kafka_local.py stop --dir run/kafka3

Nodes are found by the pids in their pid files, never by process name.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import kafka_local
import localproc
from kafka_config import log4j_properties, server_properties
from kafka_jars import KafkaLocalError, fetch, kafka_version

CLUSTER_FILE = "cluster.json"
MAX_REPLICAS = 3


@dataclass(frozen=True)
class Node:
    index: int  # 1-based; also the node.id
    port: int
    controller_port: int

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass(frozen=True)
class ClusterState:
    """What DIR/cluster.json remembers, so a restart reuses ports, data and the cluster id."""

    cluster_id: str
    version: str
    nodes: tuple[Node, ...]

    @property
    def bootstrap(self) -> str:
        return ",".join(n.bootstrap for n in self.nodes)

    @property
    def voters(self) -> str:
        return ",".join(f"{n.index}@127.0.0.1:{n.controller_port}" for n in self.nodes)

    def node(self, index: int) -> Node:
        if not 1 <= index <= len(self.nodes):
            raise KafkaLocalError(f"no node {index}: the cluster has {len(self.nodes)}")
        return self.nodes[index - 1]


def node_dir(directory: Path | str, index: int) -> Path:
    return Path(directory).resolve() / f"node{index}"


def is_cluster(directory: Path | str) -> bool:
    return (Path(directory) / CLUSTER_FILE).exists()


def read_cluster(directory: Path | str) -> ClusterState | None:
    try:
        raw = json.loads((Path(directory) / CLUSTER_FILE).read_text())
    except FileNotFoundError:
        return None
    nodes = tuple(Node(i + 1, int(p), int(c)) for i, (p, c) in enumerate(raw["nodes"]))
    return ClusterState(str(raw["cluster_id"]), str(raw["version"]), nodes)


def _write_cluster(directory: Path, state: ClusterState) -> None:
    nodes = [[n.port, n.controller_port] for n in state.nodes]
    raw = {"cluster_id": state.cluster_id, "version": state.version, "nodes": nodes}
    (directory / CLUSTER_FILE).write_text(json.dumps(raw))


def _plan(directory: Path, count: int, first_port: int | None) -> ClusterState:
    previous = read_cluster(directory)
    if previous is not None:
        if len(previous.nodes) != count:
            raise KafkaLocalError(f"{directory} holds a {len(previous.nodes)}-node cluster")
        return previous
    if not 1 <= count <= 9:
        raise KafkaLocalError("a local cluster has 1 to 9 nodes")
    nodes = tuple(
        Node(
            i,
            first_port + i - 1 if first_port else localproc.free_port(),
            localproc.free_port(),
        )
        for i in range(1, count + 1)
    )
    state = ClusterState(kafka_local._random_cluster_id(), kafka_version(), nodes)
    directory.mkdir(parents=True, exist_ok=True)
    _write_cluster(directory, state)
    return state


def _prepare(directory: Path, state: ClusterState, node: Node) -> Path:
    """Write node's settings and format its storage (once, with the cluster's id)."""
    where = node_dir(directory, node.index)
    (where / "logs").mkdir(parents=True, exist_ok=True)
    replicas = min(len(state.nodes), MAX_REPLICAS)
    (where / "server.properties").write_text(
        server_properties(
            where,
            node.port,
            node.controller_port,
            node_id=node.index,
            voters=state.voters,
            replicas=replicas,
        )
    )
    (where / "log4j2.properties").write_text(log4j_properties(where))
    # kafka_local.status(DIR/node<i>) works on a single node too
    (where / "kafka.json").write_text(
        json.dumps(
            {"port": node.port, "controller_port": node.controller_port, "version": state.version}
        )
    )
    kafka_local._format_storage(where, fetch(state.version, quiet=True), state.cluster_id)
    return where


def node_pid(directory: Path | str, index: int) -> int | None:
    return kafka_local.running_pid(node_dir(directory, index))


def node_ready(node: Node, timeout: float = 2.0) -> bool:
    """The node serves metadata and lists itself among the live (unfenced) brokers."""
    try:
        return node.index in kafka_local.metadata_node_ids(node.port, timeout)
    except (OSError, struct.error, KafkaLocalError):
        return False


def _spawn(directory: Path, state: ClusterState, index: int) -> int:
    node = state.node(index)
    where = _prepare(directory, state, node)
    pid = node_pid(directory, index)
    if pid is not None:
        return int(pid)
    argv = kafka_local._broker_argv(where, fetch(state.version, quiet=True))
    proc = localproc.spawn(argv, where / "logs" / "kafka.out", where / "kafka.pid", where)
    return proc.pid


def _wait_nodes(directory: Path, state: ClusterState, pids: dict[int, int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for index, pid in pids.items():
        node = state.node(index)
        left = max(deadline - time.monotonic(), 0.0)
        outcome = localproc.wait_ready(pid, functools.partial(node_ready, node), left)
        if outcome != "ready":
            tail = kafka_local._log_tail(node_dir(directory, index))
            raise KafkaLocalError(f"Kafka node {index} {outcome} during start\n{tail}")


def start_nodes(
    directory: Path | str, indexes: list[int] | None = None, timeout: float = 120.0
) -> ClusterState:
    """Start the given nodes of an existing cluster (all by default) together, since a
    controller quorum needs a majority up, and wait until each serves metadata."""
    resolved = Path(directory).resolve()
    state = read_cluster(resolved)
    if state is None:
        raise KafkaLocalError(f"no cluster in {resolved} (start it with --nodes N)")
    chosen = indexes or [n.index for n in state.nodes]
    pids = {index: _spawn(resolved, state, index) for index in chosen}
    _wait_nodes(resolved, state, pids, timeout)
    return state


def start_cluster(
    directory: Path | str, nodes: int = 3, port: int | None = None, timeout: float = 120.0
) -> ClusterState:
    """Start (or restart, keeping data and ports) an N-node cluster in DIR; wait until every
    node serves metadata and lists all N brokers."""
    resolved = Path(directory).resolve()
    state = _plan(resolved, nodes, port)
    try:
        start_nodes(resolved, None, timeout)
        _wait_all_listed(state, timeout)
    except BaseException:
        stop_cluster(resolved)
        raise
    return state


def _wait_all_listed(state: ClusterState, timeout: float) -> None:
    wanted = {n.index for n in state.nodes}
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError, struct.error, KafkaLocalError):
            if set(kafka_local.metadata_node_ids(state.nodes[0].port, 2.0)) >= wanted:
                return
        if time.monotonic() > deadline:
            raise KafkaLocalError(f"not all {len(wanted)} brokers registered after {timeout:.0f}s")
        time.sleep(0.25)


def kill_node(directory: Path | str, index: int) -> bool:
    """SIGKILL node `index` by its pid (no controlled shutdown); True if it ran."""
    where = node_dir(directory, index)
    pid = kafka_local.running_pid(where)
    if pid is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + localproc.KILL_TIMEOUT_S
    while time.monotonic() < deadline and localproc.alive(pid):
        time.sleep(0.05)
    (where / "kafka.pid").unlink(missing_ok=True)
    return True


def stop_node(directory: Path | str, index: int, timeout: float = 30.0) -> bool:
    """Stop node `index` gracefully (SIGTERM by pid, SIGKILL after timeout); True if it ran."""
    return kafka_local.stop(node_dir(directory, index), timeout)


def stop_cluster(directory: Path | str, timeout: float = 20.0) -> int:
    """Stop every node, SIGKILLing what still runs after `timeout` in all; how many ran.
    All get SIGTERM first: a node stopping alone after the others would wait for a controller
    quorum that is gone."""
    state = read_cluster(directory)
    if state is None:
        return 0
    ran = 0
    for node in state.nodes:
        pid = node_pid(directory, node.index)
        if pid is not None:
            ran += 1
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for node in state.nodes:
        stop_node(directory, node.index, max(deadline - time.monotonic(), 0.1))
    return ran


def cluster_status(directory: Path | str) -> list[tuple[Node, int | None, bool]]:
    """(node, pid or None, serves metadata) for every node."""
    state = read_cluster(directory)
    if state is None:
        return []
    result = []
    for node in state.nodes:
        pid = node_pid(directory, node.index)
        result.append((node, pid, bool(pid) and node_ready(node)))
    return result
