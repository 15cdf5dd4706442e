"""What the events dispatcher and the retry loop share: a group consumer whose records finish
out of order (each when its batches are acknowledged), committed per partition only up to the
lowest unfinished offset (kafka/ledger.py), pausing while too much is held.

A revoked partition commits what finished and forgets the rest: the next owner reads it again,
and a batch still being sent from it may be sent twice (at least once, never lost). Each record
is handed out with a ticket naming its partition's assignment, so a late finish of a record
from before a revocation never finishes the same offset read again after the partition came
back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Hashable
from typing import Any, NamedTuple

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError

from mailsluice.kafka.clients import make_consumer
from mailsluice.kafka.ledger import Ledger
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.observability.progress import Progress

log = logging.getLogger(__name__)

# aiokafka retries a commit while Kafka is away; give up after this (it is retried next round).
COMMIT_TIMEOUT_S = 15.0
# Wait after a failed fetch.
BACKOFF_S = 1.0
# How long a stopping consumer waits for the batches it sent to finish.
STOP_GRACE_S = 30.0


class Ticket(NamedTuple):
    """A record being worked on: finish(ticket) when it is done."""

    tp: Hashable
    offset: int
    generation: int  # of its partition's assignment


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: LedgerConsumer) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._owner.on_revoked(list(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        # not awaited here: the positions are found by the fetcher once the rebalance is done
        owner = self._owner
        owner.positioning = asyncio.create_task(owner.positioned(list(assigned)))


class LedgerConsumer:
    """Subclasses implement `take(ticket, record)` and `work()`, and call `finish(ticket)`."""

    name = "webhooks"

    def __init__(
        self,
        kafka: KafkaSettings,
        topics: list[str],
        *,
        group: str,
        stall_s: float,
        client_id: str,
        consumer_options: dict[str, Any] | None = None,
    ) -> None:
        self.kafka = kafka
        self.topics = topics
        self.group = group
        self.client_id = client_id
        self.consumer_options = consumer_options or {}
        self.ledger = Ledger()
        self.consumer: AIOKafkaConsumer | None = None
        self.assigned_once = False
        self.stopping = asyncio.Event()
        self.progress = Progress(stall_s, self.work, time.monotonic)
        self.tasks: set[asyncio.Task[None]] = set()
        self.positioning: asyncio.Task[None] | None = None
        self._paused = False
        self._generation: dict[Hashable, int] = {}
        self._lock = asyncio.Lock()  # a commit or a revocation at a time

    # --- to implement ---------------------------------------------------------------------------

    def take(self, ticket: Ticket, record: Any) -> None:
        raise NotImplementedError

    def work(self) -> int:
        """Work held (for liveness and flow control)."""
        raise NotImplementedError

    def over_limit(self) -> bool:
        """True while fetching should pause."""
        return False

    def under_limit(self) -> bool:
        """True when a paused consumer may fetch again."""
        return True

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        consumer = make_consumer(
            self.kafka, group_id=self.group, client_id=self.client_id, **self.consumer_options
        )
        consumer.subscribe(self.topics, listener=_Listener(self))
        await consumer.start()
        self.consumer = consumer

    def stop(self) -> None:
        self.stopping.set()

    async def positioned(self, assigned: list[TopicPartition]) -> None:
        """Ready once every assigned partition's position is known. A group's first start at
        `latest` takes the end of the log when the position is looked up, so an event written
        after readiness is never skipped."""
        assert self.consumer is not None
        for tp in assigned:
            with contextlib.suppress(KafkaError):  # IllegalStateError among them
                await self.consumer.position(tp)  # a partition revoked meanwhile: no matter
        self.assigned_once = True

    def ready(self) -> tuple[bool, str]:
        if not self.assigned_once:
            return False, f"{self.name} waiting for assignment"
        return True, f"{self.name} holds {self.work()}"

    def spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def fetch(self, wait_s: float) -> None:
        """One fetch: records taken, flow decided, finished offsets committed."""
        assert self.consumer is not None
        try:
            batch = await self.consumer.getmany(timeout_ms=max(1, int(wait_s * 1000)))
        except KafkaError as exc:
            log.warning("%s fetch failed: %s", self.name, exc)
            await asyncio.sleep(BACKOFF_S)
            return
        assigned = self.consumer.assignment()
        for tp, records in batch.items():
            if tp in assigned:  # not revoked since the fetch
                generation = self._generation.get(tp, 0)
                for record in records:
                    self.ledger.add(tp, record.offset)
                    self.take(Ticket(tp, record.offset, generation), record)
        self._flow()
        await self.commit()

    def current(self, ticket: Ticket) -> bool:
        """The ticket's partition has not been revoked since it was handed out."""
        return ticket.generation == self._generation.get(ticket.tp, 0)

    def finish(self, ticket: Ticket) -> None:
        if self.current(ticket) and self.ledger.finish(ticket.tp, ticket.offset):
            self.progress.made()

    def _flow(self) -> None:
        assert self.consumer is not None
        parts = list(self.consumer.assignment())
        if not self._paused and self.over_limit():
            self.consumer.pause(*parts)
            self._paused = True
            log.info("%s paused fetching (memory bound)", self.name)
        elif self._paused and self.under_limit():
            self.consumer.resume(*parts)
            self._paused = False

    async def commit(self, only: set[TopicPartition] | None = None) -> None:
        if self.consumer is None:
            return
        async with self._lock:
            offsets = self.ledger.to_commit_within(self.consumer.assignment(), only)
            if not offsets:
                return
            try:
                await asyncio.wait_for(self.consumer.commit(offsets), COMMIT_TIMEOUT_S)
            except (KafkaError, TimeoutError) as exc:
                log.warning("%s commit failed: %s", self.name, exc)  # next round tries again
                return
            self.ledger.committed(dict(offsets))

    async def on_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.commit(set(revoked))
        self.ledger.revoke(revoked)
        for tp in revoked:
            self._generation[tp] = self._generation.get(tp, 0) + 1
        self.revoked(revoked)

    def revoked(self, revoked: list[TopicPartition]) -> None:
        """Forget what the subclass holds of revoked partitions."""

    async def close(self) -> None:
        """Wait (bounded) for batches under way, commit what finished, close the consumer."""
        if self.positioning is not None:
            self.positioning.cancel()
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=STOP_GRACE_S)
        for task in list(self.tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await self.commit()
        consumer, self.consumer = self.consumer, None
        if consumer is not None:
            with contextlib.suppress(Exception):
                await consumer.stop()
