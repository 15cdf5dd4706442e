"""A real three-node Kafka cluster (KRaft) for the durability tests, driven through
scripts/kafka_cluster.py: nodes are SIGKILLed, stopped and started by pid, one at a time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient

from mailsluice.kafka.settings import KafkaSettings
from support.eventually import eventually
from support.kafka_broker import start_on_free_ports
from support.scripts import script

NODES = 3
START_TIMEOUT_S = 120.0


# imported after support.kafka_broker loaded its sibling kafka_local, so both share it
kafka_cluster = script("kafka_cluster")


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

    async def wait_in_sync(self, *topics: str, within: float = 60.0) -> None:
        """Until every partition of `topics` has a leader and all its replicas in sync."""

        async def in_sync() -> bool:
            try:
                parts = [p for topic in topics for p in await self.partitions(topic)]
            except Exception:
                return False
            return all(p["leader"] >= 0 and len(p["isr"]) == self.size for p in parts)

        await eventually(in_sync, within=within, interval=0.5, what=f"{topics} fully in sync")


def start_cluster(directory: Path) -> KafkaCluster:
    """A three-node cluster on free ports in DIR/cluster<attempt>."""
    return start_on_free_ports(
        lambda n: KafkaCluster(Path(directory) / f"cluster{n}"), "the Kafka cluster"
    )
