"""Writing to Kafka: the one publish step of a transaction's plan (records and events awaited
with acks, bounded) and events emitted without waiting, through an outbox that keeps them
until Kafka has them (kafka/outbox.py). A full outbox (Kafka away for long) makes publish
fail, so a transaction is answered 451 rather than have its events dropped.

The producer is idempotent with acks=all (kafka/clients.py). After a failed or timed-out
publish it is replaced before the next one (kafka/producers.py), and what the old one still
buffers is dropped, not flushed: the client was answered 451 for it and will send it again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

from mailsluice.contracts.control import probe_key
from mailsluice.contracts.events import Event, encode_event
from mailsluice.contracts.topics import CONTROL_TOPIC, EVENTS_TOPIC
from mailsluice.ingest.plan import Outcome, Plan, QueueRecord
from mailsluice.kafka.clients import make_producer
from mailsluice.kafka.outbox import Outbox
from mailsluice.kafka.producers import RenewingProducer, Send
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.metrics.ingest import Ingest as metrics
from mailsluice.observability.progress import Progress

log = logging.getLogger(__name__)

HEALTH_INTERVAL_S = 2.0
EVENT_BACKLOG = 10_000  # events held while Kafka is away (a few MB); then new mail waits
STALL_S = 300.0  # events pending, Kafka answering, none written for this long: stuck


class PublishError(Exception):
    """The message is not (known to be) durable; the client must retry (451)."""


ProducerFactory = Callable[[], Any]


class Publisher:
    def __init__(
        self,
        settings: KafkaSettings,
        *,
        max_message_size: int,
        publish_timeout_s: float,
        client_id: str = "mailsluice-ingest",
        producer_factory: ProducerFactory | None = None,
        event_backlog: int = EVENT_BACKLOG,
        stall_s: float = STALL_S,
    ) -> None:
        self._timeout = publish_timeout_s
        factory = producer_factory or (
            lambda: make_producer(settings, max_message_size=max_message_size, client_id=client_id)
        )
        self._producers = RenewingProducer(factory, name="ingest")
        # After a failed publish only a write acknowledged by the in-sync replicas shows that
        # Kafka takes mail again (metadata still answers with too few replicas in sync).
        self._write_failed = False
        self._probe = probe_key("ingest", f"{socket.gethostname()}-{os.getpid()}")
        # Liveness: events waiting while Kafka answers, none written for stall_s, is stuck
        # (while Kafka is away a restart would not help and would lose them).
        self.progress = Progress(
            stall_s, lambda: self._outbox.pending if self.kafka_ok else 0, time.monotonic
        )
        self._outbox = Outbox(
            self._producers,
            limit=event_backlog,
            name="ingest-events",
            send_timeout_s=publish_timeout_s,
            on_lost=metrics.EVENTS_FAILED.inc,
            on_sent=self.progress.made,
        )
        self._health_task: asyncio.Task[None] | None = None
        self.kafka_ok = False

    async def start(self) -> None:
        await self._producers.get()
        self._outbox.start()
        self.kafka_ok = True
        self._health_task = asyncio.create_task(self._health_loop(), name="ingest-kafka-health")

    async def stop(self, grace_s: float = 10.0) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            # Bounded: a probe stuck inside the Kafka client must not hold up shutdown.
            await asyncio.wait({self._health_task}, timeout=5)
        await self._outbox.stop(grace_s)
        await self._producers.stop(grace_s)
        self.kafka_ok = False

    # --- records a reply depends on -------------------------------------------------------

    async def publish(self, records: Sequence[QueueRecord], events: Sequence[Event] = ()) -> None:
        """Send every queue record and event and wait for all acknowledgements, or raise
        PublishError."""
        sends: list[Send] = [(r.topic, r.value, r.key, r.headers()) for r in records]
        sends += [(EVENTS_TOPIC, encode_event(e), e.queue_id.encode() or None, []) for e in events]
        started = time.monotonic()
        if not self._outbox.has_room():
            # the events of this message could not be kept: Kafka has been away too long
            raise PublishError("event backlog full")
        try:
            await asyncio.wait_for(self._producers.send_all(sends), self._timeout)
        except Exception as exc:
            # answered 451: what the producer still buffers must not be written after that
            self._producers.failed()
            self.kafka_ok, self._write_failed = False, True
            raise PublishError(type(exc).__name__) from exc
        self.kafka_ok, self._write_failed = True, False
        metrics.PUBLISH_SECONDS.observe(time.monotonic() - started)

    # --- events ---------------------------------------------------------------------------

    def emit(self, event: Event) -> None:
        """Queue an event to be written without waiting; lost (logged, counted) only when the
        outbox is full, which publish() prevents for the events of accepted mail."""
        key = event.queue_id.encode() or None
        if self._outbox.put((EVENTS_TOPIC, encode_event(event), key, ())):
            return
        metrics.EVENTS_FAILED.inc()
        log.error(
            "event %s for %s lost: the event backlog is full",
            event.type.value,
            event.queue_id or "-",
            extra={"queue_id": event.queue_id},
        )

    # --- health ---------------------------------------------------------------------------

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_INTERVAL_S)
            await self.check()

    async def check(self) -> bool:
        """Probe the brokers (metadata request); recovers the producer when Kafka is back."""
        try:
            producer = await asyncio.wait_for(self._producers.get(), self._timeout)
            if self._write_failed:
                probe = [(CONTROL_TOPIC, None, self._probe, ())]
                await asyncio.wait_for(self._producers.send_all(probe), self._timeout)
                self._write_failed = False
            else:
                await asyncio.wait_for(producer.client.fetch_all_metadata(), self._timeout)
        except Exception:
            self.kafka_ok = False
            return False
        self.kafka_ok = True
        return True


async def publish_plan(publisher: Publisher, plan: Plan) -> Outcome:
    """The one publish step of a transaction: every record and event of the plan sent with acks.
    The plan's outcome (250) only once all are acknowledged; UNWRITTEN (451 4.3.0) on any
    failure or timeout. A plan with nothing to write answers at once, without Kafka."""
    if not plan.writes:
        return plan.outcome
    try:
        await publisher.publish(plan.records, plan.events)
    except PublishError as exc:
        if plan.unwritten_note is not None:
            note = plan.unwritten_note
            log.warning("%s (%s)", note.text, exc, extra=note.extra)
        return plan.unwritten
    return plan.outcome
