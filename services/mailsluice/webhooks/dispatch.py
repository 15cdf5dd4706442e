"""The events dispatcher: mailsluice.events (group mailsluice.webhooks) into batches per
(tenant, endpoint), each sent by the courier.

An event goes to the endpoints of its own tenant (`Event.tenant`) that asked for its webhook
type; an event of no tenant, or of a type no endpoint asked for, finishes at once. A record
finishes when every batch holding one of its items is finished (delivered, or its retry or
dead-letter record acknowledged), and the partition commits only up to its lowest unfinished
record, so a crash sends some batches again and never loses one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from typing import Any, cast

from aiokafka import TopicPartition

from mailsluice.contracts.events import decode_event
from mailsluice.contracts.topics import EVENTS_TOPIC, WEBHOOKS_GROUP
from mailsluice.contracts.webhook_payload import batch_body, batch_id, event_id, payload_item
from mailsluice.contracts.webhook_records import PendingBatch
from mailsluice.contracts.webhooks import WEBHOOK_TYPE_OF
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.metrics.webhooks import Webhooks as metrics
from mailsluice.tenancy.registry import Registry
from mailsluice.webhooks.batching import Batch, Batcher
from mailsluice.webhooks.consuming import LedgerConsumer, Ticket
from mailsluice.webhooks.courier import Courier
from mailsluice.webhooks.settings import WebhooksSettings

log = logging.getLogger(__name__)

# Longest wait for records between checks of the open batches' deadlines.
POLL_S = 0.2


def route(registry: Registry, event: Any, eid: str) -> list[tuple[str, dict[str, Any]]]:
    """(endpoint id, item) for every endpoint of the event's tenant that wants it."""
    wtype = WEBHOOK_TYPE_OF.get(event.type)
    tenant = registry.get(event.tenant) if event.tenant and wtype is not None else None
    if tenant is None or wtype is None:
        return []
    wanted = [w.id for w in tenant.webhooks if wtype in w.events]
    if not wanted:
        return []
    item = payload_item(event, wtype, eid)
    return [(endpoint, item) for endpoint in wanted]


class Dispatcher(LedgerConsumer):
    name = "webhook dispatcher"

    def __init__(
        self,
        kafka: KafkaSettings,
        settings: WebhooksSettings,
        registry: Registry,
        courier: Courier,
        *,
        wall: Callable[[], float] = time.time,
        client_id: str = "mailsluice-webhooks",
        consumer_options: dict[str, Any] | None = None,
        group: str = WEBHOOKS_GROUP,
    ) -> None:
        super().__init__(
            kafka,
            [EVENTS_TOPIC],
            group=group,
            stall_s=settings.stall_s,
            client_id=client_id,
            consumer_options=consumer_options,
        )
        self.settings = settings
        self.registry = registry
        self.courier = courier
        self.wall = wall
        self.batcher = Batcher(
            settings.batch_max_events, settings.batch_max_bytes, settings.batch_max_wait_ms / 1000
        )
        self._refs: dict[Hashable, int] = {}  # record -> batches not finished holding it
        self.pending = 0  # events read whose batch is not finished

    def work(self) -> int:
        return self.pending

    def over_limit(self) -> bool:
        return self.pending >= self.settings.max_buffered_events

    def under_limit(self) -> bool:
        return self.pending <= self.settings.max_buffered_events // 2

    async def run(self) -> None:
        if self.consumer is None:
            await self.start()
        try:
            while not self.stopping.is_set():
                next_due = self.batcher.next_due()
                now = self.wall()
                wait = POLL_S if next_due is None else min(POLL_S, max(0.0, next_due - now))
                await self.fetch(wait)
                for batch in self.batcher.due(self.wall()):
                    self._launch(batch)
                metrics.BUFFERED.set(self.pending)
        finally:
            await self.close()

    def take(self, ticket: Ticket, record: Any) -> None:
        try:
            event = decode_event(record.value)
        except ValueError as exc:
            log.error("webhooks: skipping undecodable event at %s (%s)", ticket, exc)
            self.finish(ticket)
            return
        routed = route(self.registry, event, event_id(record.partition, record.offset))
        if not routed:
            self.finish(ticket)
            return
        source = ticket
        self._refs[source] = len(routed)
        self.pending += len(routed)
        now = self.wall()
        for endpoint, item in routed:
            for batch in self.batcher.add(event.tenant, endpoint, item, source, now):
                self._launch(batch)

    def _launch(self, batch: Batch) -> None:
        ids = [str(item["id"]) for item in batch.items]
        pending = PendingBatch(
            id=batch_id(batch.tenant, batch.endpoint, ids),
            tenant=batch.tenant,
            endpoint=batch.endpoint,
            events=len(batch.items),
            body=batch_body(batch.items, self.wall()),
        )
        self.spawn(self._send(pending, batch.sources))

    async def _send(self, pending: PendingBatch, sources: list[Hashable]) -> None:
        try:
            await self.courier.attempt(pending)
        except Exception:
            # its events stay counted as held, so liveness fails and a restart reads them again
            log.exception("webhooks: batch %s failed unexpectedly; left uncommitted", pending.id)
            return
        self.pending -= pending.events
        for source in sources:
            left = self._refs.get(source, 0) - 1
            if left > 0:
                self._refs[source] = left
                continue
            self._refs.pop(source, None)
            self.finish(cast(Ticket, source))

    def revoked(self, revoked: list[TopicPartition]) -> None:
        gone = set(revoked)
        self._refs = {s: n for s, n in self._refs.items() if cast(Ticket, s).tp not in gone}
