"""Kafka clients, configured the one way every process uses them.

Producers are idempotent with acks=all: a record acknowledged to us is on every in-sync
replica, which is what lets ingest answer 250. Consumers commit by hand and read committed
records only. A group member heartbeats every second (aiokafka: 3 s): it hears of a rebalance
only in the answer to a heartbeat or a commit, and the partitions being handed over wait
meanwhile."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from mailsluice.contracts.limits import record_limit
from mailsluice.kafka.settings import KafkaSettings


def make_producer(
    settings: KafkaSettings, *, max_message_size: int, client_id: str, **overrides: Any
) -> AIOKafkaProducer:
    opts: dict[str, Any] = {
        **settings.client_options(),
        "client_id": client_id,
        "acks": "all",
        "enable_idempotence": True,
        "max_request_size": record_limit(max_message_size),
        "linger_ms": 2,
        "max_batch_size": 256 * 1024,
    }
    opts.update(overrides)
    return AIOKafkaProducer(**opts)


def make_consumer(
    settings: KafkaSettings, *topics: str, group_id: str | None, client_id: str, **overrides: Any
) -> AIOKafkaConsumer:
    opts: dict[str, Any] = {
        **settings.client_options(),
        "client_id": client_id,
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed",
        "max_partition_fetch_bytes": 8 * 1024 * 1024,
        "fetch_max_bytes": 64 * 1024 * 1024,
    }
    if group_id is not None:
        opts["heartbeat_interval_ms"] = settings.heartbeat_interval_ms
    opts.update(overrides)
    return AIOKafkaConsumer(*topics, **opts)
