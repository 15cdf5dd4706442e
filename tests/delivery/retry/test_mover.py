"""The retry mover holds each record until its not_before, per partition (real broker)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from support.delivery_worker import envelope, new_pool, setup_pool

from mailsluice.contracts.envelope import ENVELOPE_HEADER, encode_envelope, envelope_from_headers
from mailsluice.contracts.topics import queue_topic, retry_topic
from mailsluice.delivery.retry.mover import RetryMover


async def test_mover_waits_for_not_before_without_blocking_other_partitions(kafka: Any) -> None:
    ks = kafka.settings(queue_partitions=2)
    pool = new_pool()
    await setup_pool(ks, pool)
    mover = RetryMover(ks, consumer_options={"session_timeout_ms": 6000})
    await mover.start()
    task = mover.start_background()
    # Joining the group takes a while on a fresh broker: measure from when the mover owns
    # its partitions.
    ready_by = time.monotonic() + 60
    while not mover.ready()[0]:
        assert time.monotonic() < ready_by, mover.ready()
        await asyncio.sleep(0.05)
    now = time.time()
    late = envelope(pool, 0, ("a@late.example",), not_before=now + 3.0)
    soon = envelope(pool, 1, ("b@soon.example",), not_before=now)
    producer = AIOKafkaProducer(bootstrap_servers=ks.bootstrap, acks="all")
    await producer.start()
    try:
        topic = retry_topic("1m")
        for env, partition in ((late, 0), (soon, 1)):
            headers = [(ENVELOPE_HEADER, encode_envelope(env))]
            await producer.send_and_wait(
                topic, b"body", key=env.routing_key.encode(), headers=headers, partition=partition
            )
        # An undecodable record is skipped, not a crash loop.
        await producer.send_and_wait(topic, b"junk", partition=1)
    finally:
        await producer.stop()

    arrived: dict[str, float] = {}
    consumer = AIOKafkaConsumer(
        queue_topic(pool),
        bootstrap_servers=ks.bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + 60
        while len(arrived) < 2:
            assert time.monotonic() < deadline, arrived
            batch = await consumer.getmany(timeout_ms=100)
            for records in batch.values():
                for rec in records:
                    env = envelope_from_headers(rec.headers)
                    arrived[env.queue_id] = time.time()
                    assert rec.value == b"body"
                    assert rec.key == env.routing_key.encode()
    finally:
        await consumer.stop()
        mover.stop()
        await asyncio.wait_for(task, 30)
    assert arrived[late.queue_id] >= late.not_before
    assert arrived[soon.queue_id] < late.not_before  # not held behind the other partition
    assert mover.moved >= 2
