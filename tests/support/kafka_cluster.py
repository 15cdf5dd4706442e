"""A real three-node Kafka cluster (KRaft) for the durability tests, driven through
scripts/kafka_cluster.py: nodes are SIGKILLed, stopped and started by pid, one at a time."""

from __future__ import annotations

import atexit
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient

from mailsluice.kafka.settings import KafkaSettings
from support.eventually import eventually
from support.kafka_broker import REPO_ROOT, kafka_local

NODES = 3
START_TIMEOUT_S = 120.0


def _load_kafka_cluster() -> ModuleType:
    # Loaded by path like kafka_local (its sibling, already in sys.modules under that name).
    name = "kafka_cluster"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / "kafka_cluster.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


kafka_cluster = _load_kafka_cluster()


class KafkaCluster:
    """Three combined broker+controller nodes in `directory`, numbered 1 to 3."""

    def __init__(self, directory: Path, nodes: int = NODES) -> None:
        self.directory = Path(directory)
        self.size = nodes
        self.state: Any = None

    @property
    def bootstrap(self) -> str:
        return str(self.state.bootstrap)

    @property
    def indexes(self) -> list[int]:
        return list(range(1, self.size + 1))

    def settings(self, **overrides: Any) -> KafkaSettings:
        """Clients of this cluster, creating topics with 3 replicas and min.insync.replicas 2:
        the production settings (MAILSLUICE_KAFKA_REPLICATION_FACTOR, _MIN_INSYNC_REPLICAS)."""
        overrides.setdefault("bootstrap", self.bootstrap)
        overrides.setdefault("replication_factor", self.size)
        overrides.setdefault("min_insync_replicas", 2)
        return KafkaSettings(**overrides)

    def start(self) -> None:
        self.state = kafka_cluster.start_cluster(self.directory, self.size, timeout=START_TIMEOUT_S)

    def stop(self) -> None:
        kafka_cluster.stop_cluster(self.directory)

    def pid(self, index: int) -> int | None:
        pid = kafka_cluster.node_pid(self.directory, index)
        return None if pid is None else int(pid)

    def running(self) -> list[int]:
        return [i for i in self.indexes if self.pid(i) is not None]

    def kill(self, index: int) -> None:
        """SIGKILL node `index`: no controlled shutdown, its leaderships move only once the
        controller fences it."""
        assert kafka_cluster.kill_node(self.directory, index), f"node {index} was not running"

    def stop_node(self, index: int) -> None:
        assert kafka_cluster.stop_node(self.directory, index), f"node {index} was not running"

    def start_nodes(self, *indexes: int) -> None:
        """Start the given nodes (together) and wait until each serves metadata."""
        kafka_cluster.start_nodes(self.directory, list(indexes), START_TIMEOUT_S)

    def ensure_all_running(self) -> None:
        down = [i for i in self.indexes if i not in self.running()]
        if down:
            self.start_nodes(*down)

    # --- partition state, as the brokers report it ------------------------------------------

    async def partitions(self, topic: str) -> list[dict[str, Any]]:
        """describe_topics' partitions of `topic`: partition, leader, replicas, isr."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000)
        await admin.start()
        try:
            described = await admin.describe_topics([topic])
        finally:
            await admin.close()
        found = [t for t in described if t["topic"] == topic and not t["error_code"]]
        assert found, f"topic {topic} not found: {described}"
        return sorted(found[0]["partitions"], key=lambda p: p["partition"])

    async def leaders(self, topic: str) -> dict[int, int]:
        return {p["partition"]: p["leader"] for p in await self.partitions(topic)}

    async def wait_in_sync(self, topic: str, *, within: float = 60.0) -> None:
        """Until every partition of `topic` has a leader and all its replicas in sync."""

        async def in_sync() -> bool:
            try:
                parts = await self.partitions(topic)
            except Exception:
                return False
            return all(p["leader"] >= 0 and len(p["isr"]) == self.size for p in parts)

        await eventually(in_sync, within=within, interval=0.5, what=f"{topic} fully in sync")


def start_cluster(directory: Path) -> KafkaCluster:
    """Start a three-node cluster on free ports; stopped at interpreter exit at the latest."""
    kafka_local.fetch(quiet=True)
    error: Exception | None = None
    # Free ports are picked before Java binds them: on a clash, try again on fresh ports.
    for attempt in range(3):
        cluster = KafkaCluster(Path(directory) / f"cluster{attempt}")
        atexit.register(cluster.stop)
        try:
            cluster.start()
        except kafka_local.KafkaLocalError as exc:
            cluster.stop()
            error = exc
            if "Address already in use" not in str(exc):
                break
            continue
        return cluster
    raise RuntimeError(f"could not start the Kafka cluster: {error}")
