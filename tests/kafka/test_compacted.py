"""The one compacted-view reader against the real broker: read to the end offsets taken at
start, follow live, a missing topic, a read that takes too long, a follower that survives."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition

from mailsluice.contracts.topics import TopicSpec
from mailsluice.kafka.admin import ensure_topics
from mailsluice.kafka.clients import make_consumer, make_producer
from mailsluice.kafka.compacted import CompactedView, read_to_end, read_topic
from mailsluice.kafka.settings import KafkaSettings

WITHIN_S = 30.0  # bound on a hang, not a synchronisation


@pytest.fixture
async def topic(kafka_settings: KafkaSettings) -> str:
    name = f"mailsluice.test.compacted-{uuid.uuid4().hex[:8]}"
    await ensure_topics(kafka_settings, [TopicSpec(name, 2, {"cleanup.policy": "compact"})])
    return name


@pytest.fixture
async def producer(kafka_settings: KafkaSettings) -> AsyncIterator[AIOKafkaProducer]:
    prod = make_producer(kafka_settings, max_message_size=65536, client_id="test-compacted")
    await prod.start()
    try:
        yield prod
    finally:
        await prod.stop()


async def put(
    producer: AIOKafkaProducer, topic: str, key: bytes, value: bytes | None, partition: int = 0
) -> None:
    await producer.send_and_wait(topic, value, key=key, partition=partition)


def table_of(table: dict[bytes, bytes]) -> Callable[[bytes | None, bytes | None], None]:
    """An apply() keeping the latest value per key (a tombstone removes it)."""

    def apply(key: bytes | None, value: bytes | None) -> None:
        assert key is not None
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value

    return apply


async def test_read_topic_applies_every_record_up_to_the_end(
    kafka_settings: KafkaSettings, topic: str, producer: AIOKafkaProducer
) -> None:
    await put(producer, topic, b"a", b"1", partition=0)
    await put(producer, topic, b"b", b"1", partition=1)
    await put(producer, topic, b"a", b"2", partition=0)
    await put(producer, topic, b"b", None, partition=1)
    await put(producer, topic, b"c", b"1", partition=1)
    table: dict[bytes, bytes] = {}
    await read_topic(
        kafka_settings, topic, table_of(table), client_id="test-compacted", timeout_s=60
    )
    assert table == {b"a": b"2", b"c": b"1"}


async def test_read_to_end_starts_where_told_and_counts_what_it_applied(
    kafka_settings: KafkaSettings, topic: str, producer: AIOKafkaProducer
) -> None:
    for n in range(5):
        await put(producer, topic, f"k{n}".encode(), b"v", partition=0)
    await put(producer, topic, b"other", b"v", partition=1)
    seen: list[bytes | None] = []
    consumer = make_consumer(kafka_settings, group_id=None, client_id="test-compacted")
    await consumer.start()
    try:
        p0, p1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
        count = await read_to_end(
            consumer, [p0, p1], lambda key, _value: seen.append(key), start={p0: 3}
        )
        assert count == 3
        assert sorted(k for k in seen if k is not None) == [b"k3", b"k4", b"other"]
        assert await read_to_end(consumer, [], lambda key, value: None) == 0
    finally:
        await consumer.stop()


async def test_a_read_that_takes_too_long_names_the_topic(
    kafka_settings: KafkaSettings, topic: str, producer: AIOKafkaProducer
) -> None:
    await put(producer, topic, b"a", b"1")
    consumer = make_consumer(kafka_settings, group_id=None, client_id="test-compacted")
    await consumer.start()
    try:
        with pytest.raises(TimeoutError, match=f"{topic} not read to its end within 0s"):
            await read_to_end(
                consumer, [TopicPartition(topic, 0)], lambda key, value: None, timeout_s=0
            )
    finally:
        await consumer.stop()


async def test_a_missing_topic_fails_cleanly(kafka_settings: KafkaSettings) -> None:
    missing = f"mailsluice.test.missing-{uuid.uuid4().hex[:8]}"
    view = CompactedView(
        kafka_settings, missing, lambda key, value: None, client_id="test-compacted"
    )
    with pytest.raises(TimeoutError, match="does not exist"):
        await view.start(timeout_s=1.0)
    assert not view.ready


async def test_the_view_is_ready_after_the_read_and_follows_new_records(
    kafka_settings: KafkaSettings, topic: str, producer: AIOKafkaProducer
) -> None:
    await put(producer, topic, b"old", b"1")
    table: dict[bytes, bytes] = {}
    batches = asyncio.Event()
    view = CompactedView(
        kafka_settings, topic, table_of(table), client_id="test-compacted", on_batch=batches.set
    )
    assert not view.ready
    await view.start(timeout_s=60)
    try:
        assert view.ready
        assert table == {b"old": b"1"}  # no waiting: start() returns once it is read
        task = view.follow_in_background()
        assert view.follow_in_background() is task  # one follower per view
        await put(producer, topic, b"new", b"1", partition=1)
        await put(producer, topic, b"old", None, partition=0)
        while table != {b"new": b"1"}:
            batches.clear()
            await asyncio.wait_for(batches.wait(), WITHIN_S)
        with pytest.raises(RuntimeError, match="already started"):
            await view.start()
    finally:
        await view.stop()
    assert not view.ready
    assert task.done()


async def test_the_follower_survives_a_failing_apply_and_waits_before_the_next_fetch(
    kafka_settings: KafkaSettings, topic: str, producer: AIOKafkaProducer
) -> None:
    applied: list[bytes] = []
    waits: list[float] = []
    batches, failed = asyncio.Event(), asyncio.Event()

    def apply(key: bytes | None, value: bytes | None) -> None:
        assert key is not None
        if key == b"poison":
            raise ValueError("cannot apply")
        applied.append(key)

    async def no_wait(seconds: float) -> None:
        waits.append(seconds)
        failed.set()

    view = CompactedView(
        kafka_settings,
        topic,
        apply,
        client_id="test-compacted",
        on_batch=batches.set,
        retry_s=7.0,
        sleep=no_wait,
    )
    await view.start(timeout_s=60)
    view.follow_in_background()
    try:
        await put(producer, topic, b"poison", b"x")
        await asyncio.wait_for(failed.wait(), WITHIN_S)
        await put(producer, topic, b"after", b"x", partition=1)
        while b"after" not in applied:
            batches.clear()
            await asyncio.wait_for(batches.wait(), WITHIN_S)
        assert waits == [7.0]
    finally:
        await view.stop()
