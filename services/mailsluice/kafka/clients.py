"""Kafka clients, configured the one way every process uses them.

Producers are idempotent with acks=all: a record acknowledged to us is on every in-sync
replica, which is what lets ingest answer 250. Consumers commit by hand and read committed
records only. A group member heartbeats every second (aiokafka: 3 s): it hears of a rebalance
only in the answer to a heartbeat or a commit, and the partitions being handed over wait
meanwhile. With a group instance id (static membership) a restarted process rejoins as itself:
no rebalance, no wait for the dead member's session to expire."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaClient, AIOKafkaConsumer, AIOKafkaProducer

from mailsluice.contracts.limits import record_limit
from mailsluice.kafka.settings import KafkaSettings

# What one fetch brings per partition and in all: what a consumer holds ahead of its caller (a
# worker on 12 partitions drained a 9,000-message backlog at 95 MB peak RSS with these against
# 148 MB with 8 and 64 MiB). A record over the partition limit still comes whole (KIP-74;
# tests/kafka/test_fetch_sizes.py).
PARTITION_FETCH_BYTES = 1024 * 1024
FETCH_BYTES = 16 * 1024 * 1024

# For a busy topic (a pool's queue): the broker answers a fetch once it has this many bytes or
# after this wait, so a worker keeping up with ingest gets tens of records a fetch rather than
# one or two. In `make bench` it cut CPU per message (ours and the broker's) by about 7%, for at
# most 10 ms more latency (e2e p99 at 50 msg/s: 19 -> 27 ms).
BATCHED_FETCH: dict[str, int] = {"fetch_min_bytes": 64 * 1024, "fetch_max_wait_ms": 10}


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
    producer = AIOKafkaProducer(**opts)
    pace_metadata_updates(producer.client)
    return producer


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
        "max_partition_fetch_bytes": PARTITION_FETCH_BYTES,
        "fetch_max_bytes": FETCH_BYTES,
    }
    if group_id is not None:
        opts["heartbeat_interval_ms"] = settings.heartbeat_interval_ms
        if settings.group_instance_id:
            opts["group_instance_id"] = settings.group_instance_id
    opts.update(overrides)
    consumer = AIOKafkaConsumer(*topics, **opts)
    pace_metadata_updates(consumer._client)
    return consumer


def pace_metadata_updates(client: AIOKafkaClient) -> None:
    """Wait the client's retry backoff after a failed metadata update. aiokafka's sender asks for
    one again at once while a partition has no known leader, and with every broker down each
    attempt fails at once: some 2,000 connection attempts a second per producer for as long as
    the outage lasts (upstream's fetcher has the like, aio-libs/aiokafka#1155)."""
    update = client._metadata_update

    async def paced(cluster: Any, topics: Any) -> bool:
        ok = bool(await update(cluster, topics))
        if not ok:
            await asyncio.sleep(client._retry_backoff)
        return ok

    client._metadata_update = paced
