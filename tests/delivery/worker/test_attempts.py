"""The per-record side of the worker without Kafka: a job's source address reaches the
transport; two copies of one message reach each recipient once."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import TopicPartition
from support.attempts import attempts_for
from support.delivery_worker import FakeTransport, accept_all
from support.transport import envelope

from mailsluice.delivery.shaping.scheduler import Job
from mailsluice.delivery.transport.replies import S451_CONNECTION_RATE
from mailsluice.delivery.worker.attempts import Item
from mailsluice.metrics.delivery import Delivery as m


async def rate_limited(_env: object, _rcpt: str) -> tuple[int, str, str]:
    # Our own connection rate: the job goes back into the scheduler, nothing is produced.
    return S451_CONNECTION_RATE


def copy_of(queue_id: str, pool: str, message_key: str = "K1") -> Item:
    """One copy of message K1 to a@example.test (each copy has its own queue id)."""
    env = envelope("a@example.test", pool=pool).model_copy(
        update={"queue_id": queue_id, "message_key": message_key}
    )
    return Item(TopicPartition("q", 0), 0, 1, env, b"Subject: x\r\n\r\nx\r\n")


def counted(counter: Any, pool: str) -> float:
    return float(counter.labels(pool)._value.get())


async def test_the_jobs_source_address_reaches_the_transport() -> None:
    transport = FakeTransport(rate_limited)
    attempts = attempts_for("src-pool", transport, [])
    env = envelope("a@example.test", pool="src-pool")
    item = Item(TopicPartition("q", 0), 0, 1, env, b"Subject: x\r\n\r\nx\r\n")
    await attempts.deliver(Job("example.test", item, 0.0, 0.0, source="127.0.0.22"))
    await attempts.deliver(Job("example.test", item, 0.0, 0.0))
    assert transport.sources == ["127.0.0.22", ""]
    assert transport.calls == [("Q1", "a@example.test")] * 2


async def test_a_second_copy_of_a_message_is_not_sent_to_a_recipient_that_has_it() -> None:
    # A client sends again after a 451 whose first copy was written anyway: two records, two
    # queue ids, one message key.
    transport = FakeTransport(accept_all)
    finished: list[Item] = []
    attempts = attempts_for("copies", transport, finished)
    first, second = copy_of("Q1", "copies"), copy_of("Q2", "copies")
    other = copy_of("Q3", "copies", message_key="K2")
    for item in (first, second, other):
        await attempts.deliver(Job("example.test", item, 0.0, 0.0))
    assert transport.calls == [("Q1", "a@example.test"), ("Q3", "a@example.test")]
    assert finished == [first, second, other]
    assert counted(m.DUPLICATES_SKIPPED, "copies") == 1


async def test_a_copy_waits_while_another_copy_is_being_sent() -> None:
    sending, answer = asyncio.Event(), asyncio.Event()

    async def slow(_env: object, _rcpt: str) -> tuple[int, str, str]:
        sending.set()
        await answer.wait()
        return 250, "2.0.0", "ok"

    transport = FakeTransport(slow)
    finished: list[Item] = []
    attempts = attempts_for("inflight", transport, finished)
    first, second = copy_of("Q1", "inflight"), copy_of("Q2", "inflight")
    task = asyncio.create_task(attempts.deliver(Job("example.test", first, 0.0, 0.0)))
    await sending.wait()
    await attempts.deliver(Job("example.test", second, 0.0, 0.0))
    assert transport.calls == [("Q1", "a@example.test")]
    assert counted(m.DUPLICATE_WAITS, "inflight") == 1
    assert finished == []  # the second copy went back into the queue, untried
    answer.set()
    await task
    await attempts.deliver(Job("example.test", second, 0.0, 0.0))
    assert transport.calls == [("Q1", "a@example.test")]
    assert finished == [first, second]
