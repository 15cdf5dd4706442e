"""The retry mover: holds records of the retry delay topics until they are due, then moves them
back to their pool's queue topic.

Each tier topic holds records in roughly due order (same delay added to a growing time), so a
partition waits on its head record: it is paused while it holds fetched records, and other
partitions go on. A record is committed only after its copy on the queue topic is acknowledged.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError

from mailsluice import contracts
from mailsluice.config import KafkaSettings, LogSettings, load
from mailsluice.kafka import ensure_topics, make_consumer, make_producer, standard_topics
from mailsluice.metrics import Delivery as m

log = logging.getLogger(__name__)

GROUP = f"{contracts.TOPIC_PREFIX}.retry-mover"
# Longest sleep between checks; a due record waits at most this long past its not_before.
POLL_S = 0.2
DEFAULT_MAX_MESSAGE_SIZE = 20 * 1024 * 1024


@dataclass
class _Held:
    record: ConsumerRecord
    due: float  # epoch seconds
    topic: str | None  # destination queue topic; None for an undecodable record (skip it)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, mover: RetryMover) -> None:
        self._mover = mover

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self._mover.on_revoked(list(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self._mover.on_assigned(list(assigned))


def tier_topics() -> list[str]:
    return [contracts.retry_topic(name) for name, _ in contracts.RETRY_TIERS]


class RetryMover:
    """Usable in-process (start/run/stop) and as the `mailsluice retry-mover` command."""

    def __init__(
        self,
        kafka: KafkaSettings,
        *,
        wall: Callable[[], float] = time.time,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        client_id: str = "mailsluice-retry-mover",
        consumer_options: dict[str, Any] | None = None,
    ) -> None:
        self.kafka = kafka
        self.wall = wall
        self._max_message_size = max_message_size
        self._client_id = client_id
        self._consumer_options = consumer_options or {}
        self._held: dict[TopicPartition, deque[_Held]] = {}
        self._stopping = asyncio.Event()
        self._assigned_once = False
        self.moved = 0
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.producer = make_producer(
            self.kafka,
            max_message_size=self._max_message_size,
            client_id=f"{self._client_id}-producer",
        )
        await self.producer.start()
        self.consumer = make_consumer(
            self.kafka, group_id=GROUP, client_id=self._client_id, **self._consumer_options
        )
        self.consumer.subscribe(tier_topics(), listener=_Listener(self))
        await self.consumer.start()

    def start_background(self) -> asyncio.Task[None]:
        """Run in a task (after start()); stop() and await the task to end it."""
        self._task = asyncio.create_task(self.run(), name="retry-mover")
        return self._task

    def stop(self) -> None:
        self._stopping.set()

    def ready(self) -> tuple[bool, str]:
        if not self._assigned_once:
            return False, "retry mover waiting for assignment"
        return True, f"retry mover holds {self.waiting()} records"

    def waiting(self) -> int:
        return sum(len(q) for q in self._held.values())

    def on_assigned(self, assigned: list[TopicPartition]) -> None:
        self._assigned_once = True

    def on_revoked(self, revoked: list[TopicPartition]) -> None:
        # Held records were not committed: the next owner fetches them again.
        for tp in revoked:
            self._held.pop(tp, None)
        m.MOVER_WAITING.set(self.waiting())

    async def run(self) -> None:
        if self.consumer is None:
            await self.start()
        assert self.consumer is not None
        try:
            while not self._stopping.is_set():
                wait_ms = int(min(POLL_S, self._next_due_in()) * 1000)
                try:
                    batch = await self.consumer.getmany(timeout_ms=max(wait_ms, 0))
                except KafkaError as exc:
                    log.warning("retry mover fetch failed: %s", exc)
                    await asyncio.sleep(1.0)
                    continue
                for tp, records in batch.items():
                    self._hold(tp, records)
                await self._move_due()
        finally:
            await self._close()

    async def _close(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()
        if self.producer is not None:
            await self.producer.stop()

    def _hold(self, tp: TopicPartition, records: list[ConsumerRecord]) -> None:
        assert self.consumer is not None
        queue = self._held.setdefault(tp, deque())
        for record in records:
            try:
                env = contracts.envelope_from_headers(record.headers)
                queue.append(_Held(record, env.not_before, contracts.queue_topic(env.pool)))
            except ValueError as exc:
                log.error("skipping undecodable retry record at %s: %s", record.offset, exc)
                queue.append(_Held(record, 0.0, None))
        if queue:
            self.consumer.pause(tp)
        m.MOVER_WAITING.set(self.waiting())

    def _next_due_in(self) -> float:
        heads = [q[0].due for q in self._held.values() if q]
        return max(0.0, min(heads) - self.wall()) if heads else POLL_S

    async def _move_due(self) -> None:
        """Produce every due record, wait for the acks, then commit past them."""
        assert self.consumer is not None and self.producer is not None
        now = self.wall()
        due: dict[TopicPartition, list[_Held]] = {}
        for tp, queue in self._held.items():
            while queue and queue[0].due <= now:
                due.setdefault(tp, []).append(queue.popleft())
        if not due:
            return
        futures = []
        try:
            for held in (h for hs in due.values() for h in hs):
                if held.topic is None:
                    continue
                rec = held.record
                futures.append(
                    await self.producer.send(
                        held.topic, rec.value, key=rec.key, headers=list(rec.headers or ())
                    )
                )
            await asyncio.gather(*futures)
        except KafkaError as exc:
            log.warning("retry mover produce failed (%s); will retry", exc)
            for tp, hs in due.items():
                if tp in self._held:
                    self._held[tp].extendleft(reversed(hs))
            await asyncio.sleep(1.0)
            return
        offsets = {tp: hs[-1].record.offset + 1 for tp, hs in due.items() if tp in self._held}
        try:
            if offsets:
                await self.consumer.commit(offsets)
        except KafkaError as exc:
            # Moved but not committed: the next owner moves them again (a duplicate the
            # delivery worker's dedup absorbs); never a loss.
            log.warning("retry mover commit failed: %s", exc)
        for tp, hs in due.items():
            tier = tp.topic.rsplit(".", 1)[-1]
            m.MOVER_MOVED.labels(tier).inc(len(hs))
            self.moved += len(hs)
        for tp in offsets:
            if not self._held.get(tp):
                self.consumer.resume(tp)
        m.MOVER_WAITING.set(self.waiting())


# --- command --------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-ensure-topics",
        action="store_true",
        help="do not create missing retry topics at start",
    )


def run(args: argparse.Namespace) -> int:
    kafka = load(KafkaSettings)
    logs = load(LogSettings)
    from mailsluice.observability import setup_logging

    setup_logging(logs, "retry-mover")
    return asyncio.run(_main(kafka, ensure=not args.no_ensure_topics))


async def _main(kafka: KafkaSettings, *, ensure: bool) -> int:
    if ensure:
        specs = standard_topics(kafka, [], DEFAULT_MAX_MESSAGE_SIZE)
        await ensure_topics(kafka, [s for s in specs if s.name in tier_topics()])
    mover = RetryMover(kafka)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, mover.stop)
    await mover.start()
    log.info("retry mover running on %s", ", ".join(tier_topics()))
    await mover.run()
    return 0
