"""The per-record side of the worker without Kafka: a job's source address reaches the
transport."""

from __future__ import annotations

import random

from aiokafka import TopicPartition
from support.delivery_worker import FakeTransport
from support.transport import envelope

from mailsluice.delivery.shaping.engine import PolicyShaper
from mailsluice.delivery.shaping.scheduler import Job, Scheduler
from mailsluice.delivery.transport.replies import S451_CONNECTION_RATE
from mailsluice.delivery.worker.attempts import Attempts, Item
from mailsluice.delivery.worker.dedup import DeliveredCache
from mailsluice.delivery.worker.settings import DeliverySettings
from mailsluice.policy.shaping import default_policy


async def rate_limited(_env: object, _rcpt: str) -> tuple[int, str, str]:
    # Our own connection rate: the job goes back into the scheduler, nothing is produced.
    return S451_CONNECTION_RATE


async def test_the_jobs_source_address_reaches_the_transport() -> None:
    shaper = PolicyShaper(default_policy(), "src-pool")
    scheduler: Scheduler[Item] = Scheduler(shaper, 5.0)
    transport = FakeTransport(rate_limited)
    attempts = Attempts(
        DeliverySettings(pool="src-pool"),
        transport,
        shaper,
        scheduler,
        DeliveredCache(10),
        finish=lambda _item: None,
        release=lambda _item: None,
        wake=lambda: None,
        kafka_state=lambda _error: None,
        build_dsn=None,
        wall=lambda: 0.0,
        mono=lambda: 0.0,
        rng=random.Random(1),
    )
    env = envelope("a@example.test", pool="src-pool")
    item = Item(TopicPartition("q", 0), 0, 1, env, b"Subject: x\r\n\r\nx\r\n")
    await attempts.deliver(Job("example.test", item, 0.0, 0.0, source="127.0.0.22"))
    await attempts.deliver(Job("example.test", item, 0.0, 0.0))
    assert transport.sources == ["127.0.0.22", ""]
    assert transport.calls == [("Q1", "a@example.test")] * 2
