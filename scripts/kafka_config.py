"""What the local Kafka broker runs with: its server.properties and log4j2 settings (stdlib only).

scripts/kafka_local.py writes these into the broker's directory before it starts the broker.
"""

from __future__ import annotations

from pathlib import Path

# 40 MB messages plus batch/record overhead.
MAX_MESSAGE_BYTES = 50 * 1024 * 1024


def server_properties(directory: Path, port: int, controller_port: int) -> str:
    """server.properties of a combined broker+controller with its data in DIR/data."""
    p, c = port, controller_port
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
