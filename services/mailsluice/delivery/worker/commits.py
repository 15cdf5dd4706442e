"""Offset commits of a delivery worker's consumer, from its offset ledger.

Records finish out of order, so a partition commits only up to its lowest unfinished offset
(ledger.py): every commit interval, at revocation and at shutdown (the worker calls `commit`),
and soon after the first record of a newly gained partition finishes, so a crash right after a
restart or takeover repeats little rather than a whole interval's worth.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from mailsluice.eventloop import wait_event
from mailsluice.kafka.ledger import Ledger
from mailsluice.metrics.delivery import Delivery as m

log = logging.getLogger(__name__)

# The first finished records of a gained partition are committed this soon (at most one commit
# interval), together with whatever else finishes meanwhile.
FIRST_COMMIT_DELAY_S = 0.5


class Commits:
    def __init__(self, pool: str, ledger: Ledger, interval_s: float) -> None:
        self.pool = pool
        self.ledger = ledger
        self.interval_s = interval_s
        # commit passes made: each one committed whatever the ledger allowed then
        self.rounds = 0
        # Partitions gained and without a finished record since: their first one commits soon.
        self._fresh: set[TopicPartition] = set()
        self._soon = asyncio.Event()

    def gained(self, partitions: Iterable[TopicPartition]) -> None:
        self._fresh.update(partitions)

    def revoked(self, partitions: Iterable[TopicPartition]) -> None:
        self._fresh.difference_update(partitions)

    def finished(self, tp: TopicPartition) -> None:
        if tp in self._fresh:
            self._fresh.discard(tp)
            self._soon.set()

    async def loop(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            if await wait_event(self._soon, self.interval_s):
                await asyncio.sleep(min(FIRST_COMMIT_DELAY_S, self.interval_s))
                # first records of other partitions that finished meanwhile go in this commit,
                # not in another one a delay later
                self._soon.clear()
            await self.commit(consumer)
            self.rounds += 1

    async def commit(
        self, consumer: AIOKafkaConsumer, only: set[TopicPartition] | None = None
    ) -> None:
        """Commit what the ledger allows for assigned partitions (all, or those in `only`)."""
        offsets = self.ledger.to_commit_within(consumer.assignment(), only)
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except KafkaError as exc:
            m.COMMITS.labels(self.pool, "failed").inc()
            log.warning("offset commit failed: %s", exc)
            return
        self.ledger.committed(dict(offsets))
        m.COMMITS.labels(self.pool, "ok").inc()
        for tp, off in offsets.items():
            assert isinstance(tp, TopicPartition)
            m.COMMIT_OFFSET.labels(self.pool, str(tp.partition)).set(off)
