"""The retry loop: failed batches on the delay tiers (group mailsluice.webhooks.retry), each
held until its not_before and then tried again by the courier, which writes its next tier or
its dead letter before the record counts as finished.

A tier is not in due order (jitter, Retry-After), so fetched batches wait in one due-ordered
heap, whatever their offsets; a partition holding `max_held` batches, or all of them together
`max_held_bytes`, pauses the whole fetch until the loop holds half as many. A crash repeats
the attempts of batches fetched after the lowest unfinished offset of a partition (at least
once), never skips one.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from collections.abc import Callable, Hashable
from typing import Any

from aiokafka import TopicPartition

from mailsluice.contracts.topics import (
    WEBHOOK_RETRY_TIERS,
    WEBHOOKS_RETRY_GROUP,
    webhook_retry_topic,
)
from mailsluice.contracts.webhook_records import PendingBatch, decode_batch_record
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.metrics.webhooks import Webhooks as metrics
from mailsluice.webhooks.consuming import LedgerConsumer, Ticket
from mailsluice.webhooks.courier import Courier
from mailsluice.webhooks.settings import WebhooksSettings

log = logging.getLogger(__name__)

# Longest sleep between checks; a due batch waits at most this long past its not_before.
POLL_S = 0.2


def tier_topics() -> list[str]:
    return [webhook_retry_topic(name) for name, _ in WEBHOOK_RETRY_TIERS]


class RetryLoop(LedgerConsumer):
    name = "webhook retry loop"

    def __init__(
        self,
        kafka: KafkaSettings,
        settings: WebhooksSettings,
        courier: Courier,
        *,
        wall: Callable[[], float] = time.time,
        client_id: str = "mailsluice-webhooks-retry",
        consumer_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            kafka,
            tier_topics(),
            group=WEBHOOKS_RETRY_GROUP,
            stall_s=settings.stall_s,
            client_id=client_id,
            consumer_options=consumer_options,
        )
        self.settings = settings
        self.courier = courier
        self.wall = wall
        self._heap: list[tuple[float, int, Ticket, PendingBatch]] = []
        self._tie = itertools.count()
        # per partition: batches waiting or being tried, and their bodies' bytes
        self._held: dict[Hashable, int] = {}
        self._held_bytes: dict[Hashable, int] = {}

    def work(self) -> int:
        """Batches overdue (liveness: due ones that are never tried mean a stuck loop)."""
        now = self.wall()
        return sum(1 for entry in self._heap if entry[0] < now - 60) + len(self.tasks)

    def waiting(self) -> int:
        return sum(self._held.values())

    def over_limit(self) -> bool:
        held = self._held.values()
        return sum(self._held_bytes.values()) >= self.settings.max_held_bytes or any(
            n >= self.settings.max_held for n in held
        )

    def under_limit(self) -> bool:
        held = self._held.values()
        return sum(self._held_bytes.values()) <= self.settings.max_held_bytes // 2 and all(
            n <= self.settings.max_held // 2 for n in held
        )

    async def run(self) -> None:
        if self.consumer is None:
            await self.start()
        try:
            while not self.stopping.is_set():
                head = self._heap[0][0] if self._heap else None
                wait = POLL_S if head is None else min(POLL_S, max(0.0, head - self.wall()))
                await self.fetch(wait)
                self._launch_due(self.wall())
                metrics.WAITING.set(self.waiting())
        finally:
            await self.close()

    def take(self, ticket: Ticket, record: Any) -> None:
        try:
            batch = decode_batch_record(record.value)
        except ValueError as exc:
            log.error("webhooks: skipping undecodable retry at %s (%s)", ticket, exc)
            self.finish(ticket)
            return
        self._hold(ticket.tp, 1, len(batch.body))
        heapq.heappush(self._heap, (batch.not_before, next(self._tie), ticket, batch))

    def _launch_due(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            _due, _tie, ticket, batch = heapq.heappop(self._heap)
            self.spawn(self._retry(ticket, batch))

    async def _retry(self, ticket: Ticket, batch: PendingBatch) -> None:
        try:
            await self.courier.attempt(batch)
        except Exception:
            log.exception("webhooks: retry of %s failed unexpectedly; again in a minute", batch.id)
            heapq.heappush(self._heap, (self.wall() + 60, next(self._tie), ticket, batch))
            return
        if self.current(ticket):
            self._hold(ticket.tp, -1, -len(batch.body))
        self.finish(ticket)

    def _hold(self, tp: Hashable, count: int, size: int) -> None:
        self._held[tp] = self._held.get(tp, 0) + count
        self._held_bytes[tp] = self._held_bytes.get(tp, 0) + size

    def revoked(self, revoked: list[TopicPartition]) -> None:
        gone = set(revoked)
        self._heap = [entry for entry in self._heap if entry[2].tp not in gone]
        heapq.heapify(self._heap)
        for tp in gone:
            self._held.pop(tp, None)
            self._held_bytes.pop(tp, None)
