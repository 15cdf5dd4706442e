"""Helpers for the retry mover tests against the real broker: records put on a delay topic, a
RetryMover running in the background, and what arrives back on a pool's queue, when."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from mailsluice.contracts.envelope import (
    ENVELOPE_HEADER,
    Envelope,
    encode_envelope,
    envelope_from_headers,
)
from mailsluice.contracts.topics import queue_topic, retry_topic
from mailsluice.delivery.retry.mover import RetryMover
from mailsluice.kafka.settings import KafkaSettings
from support.eventually import eventually


def body_of(env: Envelope) -> bytes:
    return f"body {env.queue_id}".encode()


async def produce_retries(
    ks: KafkaSettings, tier: str, envs: list[Envelope], partition: int = 0
) -> None:
    """Put `envs` on the delay topic of `tier`, in this order, on one partition."""
    producer = AIOKafkaProducer(bootstrap_servers=ks.bootstrap, acks="all")
    await producer.start()
    try:
        for env in envs:
            await producer.send_and_wait(
                retry_topic(tier),
                body_of(env),
                key=env.routing_key.encode(),
                headers=[(ENVELOPE_HEADER, encode_envelope(env))],
                partition=partition,
            )
    finally:
        await producer.stop()


@contextlib.asynccontextmanager
async def running_mover(ks: KafkaSettings, **kw: Any) -> AsyncIterator[RetryMover]:
    """A RetryMover in the background that owns its partitions, for the block."""
    mover = RetryMover(ks, consumer_options={"session_timeout_ms": 6000}, **kw)
    await mover.start()
    task = mover.start_background()
    try:
        await eventually(
            lambda: mover.ready()[0], within=60, what="the mover's partitions", detail=mover.ready
        )
        yield mover
    finally:
        mover.stop()
        await asyncio.wait_for(task, 30)


class Arrivals:
    """Records arriving on a pool's queue topic: queue id -> wall time of first arrival."""

    def __init__(self, ks: KafkaSettings, pool: str) -> None:
        self.consumer = AIOKafkaConsumer(
            queue_topic(pool),
            bootstrap_servers=ks.bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
        )
        self.first: dict[str, float] = {}
        self.count = 0

    async def poll(self) -> None:
        batch = await self.consumer.getmany(timeout_ms=50)
        now = time.time()
        for records in batch.values():
            for rec in records:
                env = envelope_from_headers(rec.headers)
                assert rec.value == body_of(env)
                assert rec.key == env.routing_key.encode()
                self.first.setdefault(env.queue_id, now)
                self.count += 1

    async def expect(self, done: Callable[[], bool], *, within: float, what: str) -> None:
        """Fetch until done() holds."""

        async def fetched() -> bool:
            await self.poll()
            return done()

        await eventually(fetched, within=within, interval=0, what=what, detail=self.detail)

    async def watch(self, seconds: float) -> None:
        """Keep fetching for `seconds`: what must not arrive meanwhile."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await self.poll()

    def detail(self) -> str:
        return f"arrived: {sorted(self.first)}"


@contextlib.asynccontextmanager
async def arrivals(ks: KafkaSettings, pool: str) -> AsyncIterator[Arrivals]:
    found = Arrivals(ks, pool)
    await found.consumer.start()
    try:
        yield found
    finally:
        await found.consumer.stop()
