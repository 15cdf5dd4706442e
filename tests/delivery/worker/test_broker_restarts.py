"""A worker rides out broker restarts by itself: the broker is stopped and started again while
messages are in flight, three times, and each time every message queued so far is delivered
without touching the worker (the fault seen in the field: a worker whose producer could not
send again after a restart, stuck until someone restarted it). Wall time, marked integration;
the producer's replacement itself is proven without a broker in tests/kafka/test_producers.py.

This module stops and restarts the session's broker."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from support.delivery_worker import (
    EventLog,
    FakeTransport,
    Running,
    committed_to_end,
    enqueue,
    envelope,
    new_pool,
    service_for,
    setup_pool,
)
from support.eventually import eventually

from mailsluice.contracts.envelope import Envelope

pytestmark = pytest.mark.integration

RESTARTS = 3
BATCH = 120
RESUME_S = 90.0  # a restart, the group rejoining and the backlog delivered, at most
DUPLICATES = 0.05  # of the messages: sends in flight at a stop may be repeated


def rcpt(n: int) -> str:
    return f"r{n}@d{n % 8}.example"


async def test_a_worker_resumes_after_every_broker_restart(kafka) -> None:
    ks = kafka.settings(queue_partitions=4, request_timeout_ms=5000)
    pool = new_pool()
    await setup_pool(ks, pool)

    async def takes_a_moment(env: Envelope, recipient: str) -> tuple[int, str, str]:
        await asyncio.sleep(0.01)  # a send's duration, so a stop meets sends in flight
        return 250, "2.0.0", "ok"

    transport = FakeTransport(takes_a_moment)
    queued = 0
    async with EventLog(ks, pool) as events, Running(service_for(ks, pool, transport)):
        for _ in range(RESTARTS):
            envs: list[Envelope | None] = [
                envelope(pool, n, (rcpt(n),)) for n in range(queued, queued + BATCH)
            ]
            await enqueue(ks, envs)
            queued += BATCH
            await eventually(
                lambda q=queued: len(transport.calls) >= q - BATCH // 2,
                within=60,
                what="the batch half sent",
            )
            await asyncio.to_thread(kafka.stop)
            await asyncio.to_thread(kafka.start)
            everything = {(f"{pool}-{n:05d}", rcpt(n)) for n in range(queued)}
            await events.expect_final(everything, within=RESUME_S)
        await committed_to_end(ks, pool, within=60)
    sends = Counter(transport.calls)
    assert set(sends) == {(f"{pool}-{n:05d}", rcpt(n)) for n in range(queued)}
    repeated = sum(count - 1 for count in sends.values())
    assert repeated <= DUPLICATES * queued, f"{repeated} repeated sends of {queued}"
