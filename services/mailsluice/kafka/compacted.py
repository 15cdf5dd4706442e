"""Compacted topics read as tables: every record from the beginning up to the end offsets taken
at start, then, for a live view, each new record as it comes.

Readers use no consumer group: each needs the whole table and commits nothing. What a record
means is the caller's `apply(key, value)` (a null value is a tombstone). `read_to_end` is the
one reading loop; `CompactedView` owns a consumer around it and follows the topic afterwards;
`read_topic` is a one-shot view for commands that print a table and exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from mailsluice.kafka.admin import topic_partitions
from mailsluice.kafka.clients import make_consumer
from mailsluice.kafka.retrying import KAFKA_DOWN, Sleep, until_kafka_answers
from mailsluice.kafka.settings import KafkaSettings

log = logging.getLogger(__name__)

Apply = Callable[[bytes | None, bytes | None], object]

# How long one fetch waits for records; a reader checks its positions after each.
READ_FETCH_MS = 500
FOLLOW_FETCH_MS = 1000
MAX_RECORDS = 5000
# Wait after a failed fetch while following.
FOLLOW_RETRY_S = 1.0
# Default patience of a view's start (the topic to exist, then the read to its end).
START_TIMEOUT_S = 30.0


async def read_to_end(
    consumer: AIOKafkaConsumer,
    partitions: Iterable[TopicPartition],
    apply: Apply,
    *,
    timeout_s: float | None = None,
    start: Mapping[TopicPartition, int] | None = None,
) -> int:
    """Apply every record of `partitions` from the `start` offset where one is given, else from
    the beginning, up to their end offsets taken now; return how many were applied.

    The consumer has no group and is this caller's alone: it is assigned these partitions.
    Raises TimeoutError naming the topics when the read takes longer than `timeout_s`.
    """
    parts = list(partitions)
    if not parts:
        return 0
    scope = asyncio.timeout(timeout_s)
    try:
        async with scope:
            return await _read(consumer, parts, apply, start)
    except TimeoutError:
        if not scope.expired():
            raise
        topics = ", ".join(sorted({tp.topic for tp in parts}))
        raise TimeoutError(f"{topics} not read to its end within {timeout_s:g}s") from None


async def _read(
    consumer: AIOKafkaConsumer,
    parts: list[TopicPartition],
    apply: Apply,
    start: Mapping[TopicPartition, int] | None,
) -> int:
    consumer.assign(parts)
    start = start or {}
    if from_beginning := [tp for tp in parts if tp not in start]:
        await consumer.seek_to_beginning(*from_beginning)
    for tp in parts:
        if tp in start:
            consumer.seek(tp, start[tp])
    ends = await consumer.end_offsets(parts)
    pending = {tp for tp in parts if await consumer.position(tp) < ends[tp]}
    count = 0
    while pending:
        batch = await consumer.getmany(*pending, timeout_ms=READ_FETCH_MS, max_records=MAX_RECORDS)
        count += apply_batch(batch.values(), apply)
        for tp in list(pending):
            if await consumer.position(tp) >= ends[tp]:
                pending.discard(tp)
    return count


def apply_batch(batches: Iterable[list[Any]], apply: Apply) -> int:
    count = 0
    for records in batches:
        for record in records:
            apply(record.key, record.value)
            count += 1
    return count


class CompactedView:
    """A compacted topic kept as a table by `apply`: read to its end by `start()`, then kept
    current by `follow()` until stopped. `on_batch` runs after every batch applied while
    following (to wake waiters)."""

    def __init__(
        self,
        settings: KafkaSettings,
        topic: str,
        apply: Apply,
        *,
        client_id: str,
        on_batch: Callable[[], None] | None = None,
        retry_s: float = FOLLOW_RETRY_S,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.settings = settings
        self.topic = topic
        self.apply = apply
        self.client_id = client_id
        self.on_batch = on_batch
        self.retry_s = retry_s
        self._sleep = sleep
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self.ready = False  # read up to the end offsets seen at start

    async def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Read the topic up to its end offsets now, within `timeout_s` in all.

        Raises TimeoutError ("does not exist") when the topic does not appear in that time, or
        when the read does not reach the end; the view is stopped then.
        """
        if self._consumer is not None:
            raise RuntimeError(f"the view of {self.topic} is already started")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        partitions = await topic_partitions(self.settings, self.topic, timeout_s)
        consumer = make_consumer(self.settings, group_id=None, client_id=self.client_id)
        self._consumer = consumer
        try:
            await consumer.start()
            remaining = max(0.0, deadline - loop.time())
            await read_to_end(consumer, partitions, self.apply, timeout_s=remaining)
        except BaseException:
            await self.stop()
            raise
        self.ready = True

    async def follow(self) -> None:
        """Apply new records as they come, until cancelled. A failed fetch is retried: the
        client reconnects by itself, and a follower that ended would leave the table stale
        without a word."""
        while True:
            await until_kafka_answers(
                self._fetch,
                retry_s=self.retry_s,
                errors=(Exception,),
                on_failure=self._fetch_failed,
                sleep=self._sleep,
            )

    def follow_in_background(self) -> asyncio.Task[None]:
        """follow() in a task of its own, which stop() ends."""
        if self._task is None:
            self._task = asyncio.create_task(self.follow(), name=f"follow {self.topic}")
        return self._task

    async def _fetch(self) -> None:
        if self._consumer is None:
            raise RuntimeError(f"the view of {self.topic} is not started")
        batch = await self._consumer.getmany(timeout_ms=FOLLOW_FETCH_MS, max_records=MAX_RECORDS)
        if apply_batch(batch.values(), self.apply) and self.on_batch is not None:
            self.on_batch()

    def _fetch_failed(self, exc: Exception) -> None:
        if isinstance(exc, KAFKA_DOWN):
            log.warning("following %s: %s; retrying", self.topic, exc)
        else:
            log.error("following %s failed; retrying", self.topic, exc_info=exc)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()
        self.ready = False

    async def __aenter__(self) -> CompactedView:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def read_topic(
    settings: KafkaSettings,
    topic: str,
    apply: Apply,
    *,
    client_id: str,
    timeout_s: float = START_TIMEOUT_S,
) -> None:
    """Apply every record of `topic` up to its end now: a view read once and closed."""
    view = CompactedView(settings, topic, apply, client_id=client_id)
    try:
        await view.start(timeout_s)
    finally:
        await view.stop()
