"""The retry mover holds each record until its not_before, per partition (real broker)."""

from __future__ import annotations

import time
from typing import Any

from aiokafka import AIOKafkaProducer
from support.delivery_worker import envelope, new_pool, setup_pool
from support.retry_mover import arrivals, produce_retries, running_mover

from mailsluice.contracts.topics import retry_topic

TIER = "1m"


async def test_mover_waits_for_not_before_without_blocking_other_partitions(kafka: Any) -> None:
    ks = kafka.settings(queue_partitions=2)
    pool = new_pool()
    await setup_pool(ks, pool)
    # Joining the group takes a while on a fresh broker: measure from when the mover owns
    # its partitions.
    async with running_mover(ks) as mover, arrivals(ks, pool) as seen:
        now = time.time()
        late = envelope(pool, 0, ("a@late.example",), not_before=now + 3.0)
        soon = envelope(pool, 1, ("b@soon.example",), not_before=now)
        await produce_retries(ks, TIER, [late], partition=0)
        await produce_retries(ks, TIER, [soon], partition=1)
        # An undecodable record is skipped, not a crash loop.
        producer = AIOKafkaProducer(bootstrap_servers=ks.bootstrap, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(retry_topic(TIER), b"junk", partition=1)
        finally:
            await producer.stop()
        await seen.expect(
            lambda: len(seen.first) == 2, within=60, what="both records back on the queue"
        )
    assert seen.first[late.queue_id] >= late.not_before
    assert seen.first[soon.queue_id] < late.not_before  # not held behind the other partition
    assert mover.moved >= 2
