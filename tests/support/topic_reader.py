"""Reading a Kafka topic in a test: from the beginning, with no consumer group, up to the end
offsets as they stand when asked.

Reading "to the end as it stands" is what makes absence checks exact: everything a server
acknowledged before the read began (a 250 from ingest comes only after its records are
acknowledged) is there, so "no such record" needs no waiting window.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from mailsluice.kafka.admin import topic_partitions
from mailsluice.kafka.clients import make_consumer
from mailsluice.kafka.settings import KafkaSettings
from support.eventually import eventually

FETCH_MS = 200


class TopicReader:
    """The records of one topic that `match` accepts, in `found`, as far as read so far."""

    def __init__(self, consumer: Any, partitions: list[Any], match: Callable[[Any], bool]):
        self.consumer = consumer
        self.partitions = partitions
        self.match = match
        self.found: list[Any] = []

    async def read_to_end(self) -> list[Any]:
        """Read on up to the end offsets taken now; return everything found so far."""
        ends = await self.consumer.end_offsets(self.partitions)
        pending = {tp for tp in self.partitions if await self.consumer.position(tp) < ends[tp]}
        while pending:
            batches = await self.consumer.getmany(*pending, timeout_ms=FETCH_MS)
            for records in batches.values():
                self.found.extend(r for r in records if self.match(r))
            for tp in list(pending):
                if await self.consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
        return self.found

    async def at_least(self, count: int, *, within: float, what: str) -> list[Any]:
        """Read until `count` records are found, then to the end as it stands then."""

        async def enough() -> bool:
            return len(await self.read_to_end()) >= count

        await eventually(
            enough,
            within=within,
            interval=0.1,
            what=f"{count} {what}",
            detail=lambda: f"{len(self.found)} found",
        )
        return self.found


@contextlib.asynccontextmanager
async def reading(
    settings: KafkaSettings, topic: str, match: Callable[[Any], bool] = lambda _r: True
) -> AsyncIterator[TopicReader]:
    """A TopicReader of `topic` (which may still be being created) for the block."""
    partitions = await topic_partitions(settings, topic, 30)
    consumer = make_consumer(settings, group_id=None, client_id=f"test-reader-{uuid.uuid4().hex}")
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        yield TopicReader(consumer, partitions, match)
    finally:
        await consumer.stop()


async def read_topic(
    settings: KafkaSettings,
    topic: str,
    match: Callable[[Any], bool],
    *,
    expect: int,
    within: float = 20.0,
) -> list[Any]:
    """Every record of `topic` that `match` accepts, once `expect` of them are there, read to
    the end as it stands then (expect=0: what is there now)."""
    async with reading(settings, topic, match) as reader:
        return await reader.at_least(expect, within=within, what=f"records of {topic}")
