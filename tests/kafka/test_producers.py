"""The renewing producer: a failed one is replaced, and one abandoned while the broker is away
never writes what it buffered, even after the broker is back.

This module stops and restarts the session's broker; it restarts it in a finally."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from aiokafka.errors import KafkaError, OutOfOrderSequenceNumber
from support.eventually import eventually
from support.topic_reader import read_topic

from mailsluice.contracts.topics import TopicSpec
from mailsluice.kafka.admin import ensure_topics
from mailsluice.kafka.clients import make_producer
from mailsluice.kafka.producers import KafkaWatch, RenewingProducer, abandon
from mailsluice.kafka.settings import KafkaSettings


async def test_an_abandoned_producer_never_writes_what_it_buffered(kafka) -> None:
    settings: KafkaSettings = kafka.settings(request_timeout_ms=3000)
    topic = f"mailsluice.test.abandon-{uuid.uuid4().hex[:8]}"
    await ensure_topics(settings, [TopicSpec(topic, 1, {})])
    producer = make_producer(settings, max_message_size=65536, client_id="test-abandon")
    await producer.start()
    await (await producer.send(topic, b"before"))
    try:
        await asyncio.to_thread(kafka.stop)
        pending = await producer.send(topic, b"answered 451")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(pending), 4.0)
        closing = asyncio.create_task(abandon(producer))
    finally:
        await asyncio.to_thread(kafka.start)
    await asyncio.wait_for(closing, 60)
    assert pending.done() and pending.exception() is not None
    # a record produced after the restart marks the end: everything before it is in
    marker = make_producer(settings, max_message_size=65536, client_id="test-abandon-marker")
    await marker.start()
    try:
        await (await marker.send(topic, b"after"))
    finally:
        await marker.stop()
    values = [r.value for r in await read_topic(settings, topic, lambda _r: True, expect=2)]
    assert values == [b"before", b"after"]


class FakeProducer:
    """Sends fail with `error` until the producer is replaced."""

    made: list[FakeProducer] = []

    def __init__(self, error: KafkaError | None) -> None:
        self.error, self.sent, self.stopped = error, [], False
        FakeProducer.made.append(self)

    async def start(self) -> None:
        return None

    async def send(self, topic: str, value: bytes, **_kw: Any) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.error is not None:
            future.set_exception(self.error)
        else:
            self.sent.append(value)
            future.set_result(None)
        return future

    async def flush(self) -> None:
        return None

    async def stop(self) -> None:
        self.stopped = True


async def test_a_producer_stuck_on_a_fatal_error_is_replaced_and_closed() -> None:
    FakeProducer.made = []
    errors: list[KafkaError | None] = [OutOfOrderSequenceNumber(), None]
    holder = RenewingProducer(lambda: FakeProducer(errors.pop(0)), name="test")  # type: ignore[arg-type,return-value]
    send = [("t", b"outcome", None, ())]
    with pytest.raises(OutOfOrderSequenceNumber):
        await holder.send_all(send)
    await holder.send_all(send)  # the same records again, through a fresh producer
    first, second = FakeProducer.made
    assert (first.sent, second.sent) == ([], [b"outcome"])
    assert holder.renewals == 1
    await holder.stop()
    assert first.stopped and second.stopped


class AskedProducer(FakeProducer):
    """Answers a metadata question with `error`, or with a partition when there is none."""

    async def partitions_for(self, topic: str) -> set[int]:
        if self.error is not None:
            raise self.error
        return {0}


async def test_kafka_watch_asks_until_kafka_answers_then_stays_quiet() -> None:
    FakeProducer.made = []
    errors: list[KafkaError | None] = [KafkaError(), None]
    holder = RenewingProducer(lambda: AskedProducer(errors.pop(0)), name="test")  # type: ignore[arg-type,return-value]
    watch = KafkaWatch(holder, "t", interval_s=0.01)
    assert watch.error == "starting"  # not ready before anything answered
    watch.start()
    try:
        await eventually(lambda: watch.error == "", within=5, what="Kafka to answer")
        assert len(FakeProducer.made) == 2  # the producer that failed to answer was replaced
        watch.failed(TimeoutError())
        assert watch.error == "TimeoutError"
        watch.wrote()
        assert watch.error == ""
    finally:
        await watch.stop()
        await holder.stop()
