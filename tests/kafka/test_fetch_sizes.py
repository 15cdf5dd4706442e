"""The consumer's fetch sizes against the real broker: they bound what a worker holds in memory
(12 partitions x the partition limit), and a record larger than the partition limit, up to the
largest message, must still come through (KIP-74): a record the consumer skipped as too large
would be committed past and lost."""

from __future__ import annotations

import asyncio
import uuid

from mailsluice.contracts.limits import DEFAULT_MAX_MESSAGE_SIZE, record_limit
from mailsluice.contracts.topics import TopicSpec
from mailsluice.kafka.admin import ensure_topics
from mailsluice.kafka.clients import (
    BATCHED_FETCH,
    PARTITION_FETCH_BYTES,
    make_consumer,
    make_producer,
)
from mailsluice.kafka.settings import KafkaSettings

WITHIN_S = 60.0  # bound on a hang, not a synchronisation
PARTITIONS = 3


async def test_records_over_the_partition_limit_reach_every_partition(
    kafka_settings: KafkaSettings,
) -> None:
    topic = f"fetch-{uuid.uuid4().hex[:8]}"
    limit = record_limit(DEFAULT_MAX_MESSAGE_SIZE)
    configs = {"max.message.bytes": str(limit)}
    await ensure_topics(kafka_settings, [TopicSpec(topic, PARTITIONS, configs)])
    consumer = make_consumer(kafka_settings, topic, group_id=None, client_id="test-fetch")
    big = PARTITION_FETCH_BYTES * 3
    assert big < DEFAULT_MAX_MESSAGE_SIZE
    producer = make_producer(
        kafka_settings, max_message_size=DEFAULT_MAX_MESSAGE_SIZE, client_id="test-fetch"
    )
    await producer.start()
    try:
        for partition in range(PARTITIONS):
            for value in (b"x" * big, b"x" * big, b"small"):
                await producer.send_and_wait(topic, value, partition=partition)
    finally:
        await producer.stop()
    await consumer.start()
    got: list[tuple[int, int, int]] = []

    async def consume() -> None:
        while len(got) < 3 * PARTITIONS:
            batch = await consumer.getmany(timeout_ms=200)  # raises on a record too large
            got.extend(
                (tp.partition, r.offset, len(r.value)) for tp, rs in batch.items() for r in rs
            )

    try:
        await asyncio.wait_for(consume(), WITHIN_S)
    finally:
        await consumer.stop()
    assert sorted(got) == [
        (p, o, n) for p in range(PARTITIONS) for o, n in ((0, big), (1, big), (2, 5))
    ]


async def test_a_batched_fetch_still_brings_a_lone_small_record(
    kafka_settings: KafkaSettings,
) -> None:
    """BATCHED_FETCH asks the broker for far more bytes than one record: the wait bound must
    answer the fetch anyway, in every partition, or a quiet pool's mail would sit unread."""
    topic = f"fetch-{uuid.uuid4().hex[:8]}"
    await ensure_topics(kafka_settings, [TopicSpec(topic, PARTITIONS, {})])
    consumer = make_consumer(
        kafka_settings, topic, group_id=None, client_id="test-fetch", **BATCHED_FETCH
    )
    await consumer.start()
    producer = make_producer(kafka_settings, max_message_size=1024, client_id="test-fetch")
    await producer.start()
    got: list[tuple[int, bytes]] = []
    try:
        for partition in range(PARTITIONS):
            await producer.send_and_wait(topic, b"lone", partition=partition)
            want = len(got) + 1

            async def consume(want: int = want) -> None:
                while len(got) < want:
                    batch = await consumer.getmany(timeout_ms=200)
                    got.extend((tp.partition, r.value) for tp, rs in batch.items() for r in rs)

            await asyncio.wait_for(consume(), WITHIN_S)
    finally:
        await producer.stop()
        await consumer.stop()
    assert got == [(p, b"lone") for p in range(PARTITIONS)]
    assert BATCHED_FETCH["fetch_min_bytes"] > 100 * len(b"lone")
