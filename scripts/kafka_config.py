"""What the local Kafka broker runs with: its server.properties and log4j2 settings (stdlib only).

scripts/kafka_local.py writes these into the broker's directory before it starts the broker.
"""

from __future__ import annotations

from pathlib import Path

# 40 MB messages plus batch/record overhead.
MAX_MESSAGE_BYTES = 50 * 1024 * 1024


def server_properties(
    directory: Path,
    port: int,
    controller_port: int,
    *,
    node_id: int = 1,
    voters: str | None = None,
    replicas: int = 1,
    host: str = "127.0.0.1",
    overrides: dict[str, str] | None = None,
) -> str:
    """server.properties of a combined broker+controller with its data in DIR/data.

    Alone by default; in a cluster (scripts/kafka_cluster.py) `voters` lists every node's
    controller ("1@127.0.0.1:port,2@..."), and `replicas` > 1 gives every topic, internal ones
    included, that many replicas with min.insync.replicas 2 and no unclean leader election.
    `host` is the address both listeners bind and clients are told (a local cluster's pods
    reach the broker on the node's bridge address). `overrides` replace or add properties.
    """
    p, c = port, controller_port
    rf, isr = str(replicas), str(min(replicas, 2))
    props = {
        "process.roles": "broker,controller",
        "node.id": str(node_id),
        "controller.quorum.voters": voters or f"{node_id}@{host}:{c}",
        "listeners": f"PLAINTEXT://{host}:{p},CONTROLLER://{host}:{c}",
        "advertised.listeners": f"PLAINTEXT://{host}:{p}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(directory / "data"),
        "num.network.threads": "2",
        "num.io.threads": "4",
        "num.recovery.threads.per.data.dir": "1",
        "num.partitions": "1",
        "default.replication.factor": rf,
        "min.insync.replicas": isr,
        # A replica that was out of sync never becomes leader: what got acks=all stays.
        "unclean.leader.election.enable": "false",
        "auto.create.topics.enable": "false",
        "delete.topic.enable": "true",
        "group.initial.rebalance.delay.ms": "0",
        # Internal topics: few partitions (fast first group join on 2 cores).
        "offsets.topic.replication.factor": rf,
        "offsets.topic.num.partitions": "4",
        "transaction.state.log.replication.factor": rf,
        "transaction.state.log.min.isr": isr,
        "transaction.state.log.num.partitions": "4",
        "share.coordinator.state.topic.replication.factor": rf,
        "share.coordinator.state.topic.min.isr": isr,
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
    if replicas > 1:
        props.update(_CLUSTER_TIMING)
    props.update(overrides or {})
    return "".join(f"{k}={v}\n" for k, v in props.items())


# In a cluster, a SIGKILLed broker is noticed by its missed heartbeats: fence it (which moves
# its leaderships and drops it from the ISRs) after 6 s rather than 9, and drop a follower that
# stopped fetching from the ISR after 10 s rather than 30, so a produce waiting on it fails or
# goes on within a publish timeout.
_CLUSTER_TIMING = {
    "broker.heartbeat.interval.ms": "1000",
    "broker.session.timeout.ms": "6000",
    "replica.lag.time.max.ms": "10000",
}


def log4j_properties(directory: Path) -> str:
    """log4j2 settings: INFO into DIR/logs/server.log, the chatty loggers at WARN."""
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
