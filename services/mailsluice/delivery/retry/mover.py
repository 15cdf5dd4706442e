"""The retry mover: holds records of the retry delay topics until they are due, then moves them
back to their pool's queue topic.

Tier topics are not in due order (a throttled record carries whatever wait its destination
needs), so every fetched record waits in its partition's due-ordered heap (hold.py) and
leaves when due, whatever its offset; a partition commits only up to its lowest offset not yet
moved, and a record counts as moved only once its copy on the queue topic is acknowledged.
Memory is bounded: a partition holding `max_held` records pauses until half of them are gone.
A resume or retry-now command on the control topic (control.py) releases a destination's held
records at once (hold.py says which), their copies due on arrival.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError

from mailsluice.config import load
from mailsluice.contracts.control import Command
from mailsluice.contracts.limits import DEFAULT_MAX_MESSAGE_SIZE
from mailsluice.contracts.topics import RETRY_TIERS, TOPIC_PREFIX, retry_topic
from mailsluice.delivery.retry.control import ReleaseFollower
from mailsluice.delivery.retry.hold import (
    Held,
    RetryHold,
    held_from_record,
    moved_headers,
    tier_of,
)
from mailsluice.delivery.retry.report import CountsReporter
from mailsluice.delivery.retry.settings import RetryMoverSettings
from mailsluice.kafka.clients import make_consumer, make_producer
from mailsluice.kafka.producers import RenewingProducer
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.metrics.retry import (
    RETRY_MOVER_HELD,
    RETRY_MOVER_LATENESS,
    RETRY_MOVER_MOVED,
    RETRY_MOVER_RELEASED,
    RETRY_MOVER_WAITING,
)
from mailsluice.observability.progress import Progress

log = logging.getLogger(__name__)

GROUP = f"{TOPIC_PREFIX}.retry-mover"
# Longest sleep between checks; a due record waits at most this long past its not_before, and
# a resume or retry-now command takes effect within it.
POLL_S = 0.2
# How often, and how patiently, readiness checks that Kafka answers.
PROBE_INTERVAL_S = 5.0
PROBE_TIMEOUT_S = 10.0
# Wait after a failed fetch or produce round.
BACKOFF_S = 1.0
# aiokafka retries a commit while Kafka is away; give up after this (it is retried next round),
# so stop() and revocations never hang on it.
COMMIT_TIMEOUT_S = 15.0
# A record this late counts as work the liveness check waits on (earlier it may be in a move).
OVERDUE_S = 60.0


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, mover: RetryMover) -> None:
        self._mover = mover

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._mover.on_revoked(list(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self._mover.on_assigned(list(assigned))


@dataclass(frozen=True)
class _Offset:
    offset: int


@dataclass(frozen=True)
class _First:
    """What metrics.retry_backlog reads from `_held[tp][0]`: the first record not moved."""

    record: _Offset


def tier_topics() -> list[str]:
    return [retry_topic(name) for name, _ in RETRY_TIERS]


class RetryMover:
    """Usable in-process (start/run/stop) and as the `mailsluice retry-mover` command
    (service.py)."""

    def __init__(
        self,
        kafka: KafkaSettings,
        *,
        wall: Callable[[], float] = time.time,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        client_id: str = "mailsluice-retry-mover",
        consumer_options: dict[str, Any] | None = None,
        settings: RetryMoverSettings | None = None,
    ) -> None:
        self.kafka = kafka
        self.wall = wall
        self.settings = settings if settings is not None else load(RetryMoverSettings)
        self.hold = RetryHold(high=self.settings.max_held, high_bytes=self.settings.max_held_bytes)
        self.control = (
            ReleaseFollower(kafka, self.on_command, client_id=f"{client_id}-control")
            if self.settings.follow_control
            else None
        )
        self._max_message_size = max_message_size
        self._client_id = client_id
        self._consumer_options = consumer_options or {}
        self._stopping = asyncio.Event()
        # Liveness: a record overdue by a minute that nothing moves for stall_s is stuck.
        self.progress = Progress(self.settings.stall_s, self._overdue, time.monotonic)
        self._lock = asyncio.Lock()  # one move round or revocation at a time
        self._tasks: list[asyncio.Task[None]] = []
        self._assigned_once = False
        self._kafka_error = ""
        self.moved = 0
        self.released = 0  # moved early by a resume or retry-now command
        self.skipped = 0  # undecodable records
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: RenewingProducer | None = None
        self._task: asyncio.Task[None] | None = None
        # counts per destination for `destinations list` (report.py)
        self.report = CountsReporter(
            kafka, self.hold, lambda: self.producer, wall, self.settings.status_interval_s
        )
        self._released_since_report = False

    async def start(self) -> None:
        try:
            self.producer = RenewingProducer(
                lambda: make_producer(
                    self.kafka,
                    max_message_size=self._max_message_size,
                    client_id=f"{self._client_id}-producer",
                ),
                name="retry-mover",
            )
            await self.producer.get()
            self.consumer = make_consumer(
                self.kafka, group_id=GROUP, client_id=self._client_id, **self._consumer_options
            )
            self.consumer.subscribe(tier_topics(), listener=_Listener(self))
            await self.consumer.start()
        except BaseException:
            await self._close_clients()
            raise

    def start_background(self) -> asyncio.Task[None]:
        """Run in a task (after start()); stop() and await the task to end it."""
        self._task = asyncio.create_task(self.run(), name="retry-mover")
        return self._task

    def stop(self) -> None:
        self._stopping.set()

    @property
    def stopping(self) -> asyncio.Event:
        """Set by stop()."""
        return self._stopping

    def ready(self) -> tuple[bool, str]:
        if not self._assigned_once:
            return False, "retry mover waiting for assignment"
        if self._kafka_error:
            return False, f"retry mover: Kafka {self._kafka_error}"
        return True, f"retry mover holds {self.waiting()} records"

    def waiting(self) -> int:
        return self.hold.count()

    def _overdue(self) -> int:
        due = self.hold.next_due()
        return int(due is not None and due < self.wall() - OVERDUE_S)

    @property
    def _held(self) -> dict[Hashable, list[_First]]:
        """The first unmoved record per partition, for metrics.retry_backlog."""
        out = {}
        for tp in self.hold.ledger.partitions():
            first = self.hold.first_unmoved(tp)
            if first is not None:
                out[tp] = [_First(_Offset(first))]
        return out

    # --- rebalance and releases ----------------------------------------------------------------

    def on_assigned(self, assigned: list[TopicPartition]) -> None:
        self._assigned_once = True
        log.info("retry mover assigned %d tier partitions", len(assigned))

    async def on_revoked(self, revoked: list[TopicPartition]) -> None:
        """Commit what was moved, then drop held records: the next owner fetches them again."""
        gone = set(revoked)
        async with self._lock:  # a move round under way finishes (acks, commit) first
            await self._commit(only=gone)
            dropped = self.hold.revoke(gone)
        if dropped:
            log.info("retry mover revoked partitions; %d held records left to the next", dropped)
        self._export()

    def on_command(self, cmd: Command) -> None:
        """A resume (shaping holds) or retry-now (every held record) of a destination: its
        records written before the command become due now."""
        count = self.hold.release(cmd.pool, cmd.key, cmd.ts, shaped_only=cmd.action == "resume")
        if count:
            log.info("%s %s/%s released %d held records", cmd.action, cmd.pool, cmd.key, count)
            self._released_since_report = True  # their counts go once they are moved

    # --- the loop -------------------------------------------------------------------------------

    async def run(self) -> None:
        if self.consumer is None:
            await self.start()
        self._tasks = [
            asyncio.create_task(self._probe(), name="retry-mover-probe"),
            asyncio.create_task(self.report.run(), name="retry-mover-report"),
        ]
        if self.control is not None:
            self._tasks.append(asyncio.create_task(self.control.run(), name="retry-mover-ctl"))
        try:
            while not self._stopping.is_set():
                await self._round()
        finally:
            await self._close()

    async def _round(self) -> None:
        assert self.consumer is not None
        next_due = self.hold.next_due()
        wait = POLL_S if next_due is None else min(POLL_S, max(0.0, next_due - self.wall()))
        try:
            batch = await self.consumer.getmany(timeout_ms=int(wait * 1000))
        except KafkaError as exc:
            log.warning("retry mover fetch failed: %s", exc)
            await asyncio.sleep(BACKOFF_S)
            return
        assigned = self.consumer.assignment()
        for tp, records in batch.items():
            if tp in assigned:  # not a partition revoked since the fetch
                for record in records:
                    self.hold.add(held_from_record(tp, record))
        self._flow()
        if not await self._move_due():
            await asyncio.sleep(BACKOFF_S)
        elif self._released_since_report:
            self._released_since_report = False
            self.report.soon()
        self._export()

    def _flow(self) -> None:
        assert self.consumer is not None
        pause, resume = self.hold.flow()
        assigned = self.consumer.assignment()
        if pause := [tp for tp in pause if tp in assigned]:
            self.consumer.pause(*pause)
            log.info("retry mover paused %d partitions (memory bound)", len(pause))
        if resume := [tp for tp in resume if tp in assigned]:
            self.consumer.resume(*resume)

    async def _move_due(self) -> bool:
        """Produce every due record, wait for the acks, then commit past them; False when some
        move failed (they are held again and retried)."""
        async with self._lock:
            now = self.wall()
            due = self.hold.take_due(now)
            if not due:
                return True
            moves = (self._move(h, now) for h in due)
            results = await asyncio.gather(*moves, return_exceptions=True)
            acked = self.wall()
            failed = []
            for held, result in zip(due, results, strict=True):
                if isinstance(result, BaseException):
                    failed.append(held)
                elif self.hold.done(held):
                    self._count(held, acked)
            self.hold.put_back(failed)
            await self._commit()
        if failed:
            error = next(r for r in results if isinstance(r, BaseException))
            log.warning("retry mover could not move %d records (%s); retrying", len(failed), error)
            if isinstance(error, asyncio.CancelledError):
                raise error
            return False
        return True

    async def _move(self, held: Held, now: float) -> None:
        assert self.producer is not None
        if held.topic is None:
            return  # undecodable: finished without a copy
        rec = held.record
        # a failure replaces the producer: the record is put back and moved again later
        await self.producer.send_all([(held.topic, rec.value, rec.key, moved_headers(held, now))])

    def _count(self, held: Held, now: float) -> None:
        if held.topic is None:
            self.skipped += 1
            return
        tier = tier_of(str(getattr(held.tp, "topic", "")))
        self.moved += 1
        self.progress.made()
        RETRY_MOVER_MOVED.labels(tier).inc()
        if held.released:
            self.released += 1
            RETRY_MOVER_RELEASED.labels(tier).inc()
        else:
            RETRY_MOVER_LATENESS.labels(tier).observe(max(0.0, now - held.due))

    async def _commit(self, only: set[TopicPartition] | None = None) -> None:
        if self.consumer is None:
            return
        assigned = self.consumer.assignment()
        offsets = {tp: off for tp, off in self.hold.to_commit(only).items() if tp in assigned}
        if not offsets:
            return
        try:
            await asyncio.wait_for(self.consumer.commit(offsets), COMMIT_TIMEOUT_S)
        except (KafkaError, TimeoutError) as exc:
            # Moved but not committed: the next owner moves them again (a duplicate the
            # delivery worker's dedup absorbs); never a loss.
            log.warning("retry mover commit failed: %s", exc)
            return
        self.hold.committed(dict(offsets))

    def _export(self) -> None:
        per_tier = dict.fromkeys((name for name, _ in RETRY_TIERS), 0)
        for tp, count in self.hold.counts().items():
            tier = tier_of(str(getattr(tp, "topic", "")))
            per_tier[tier] = per_tier.get(tier, 0) + count
        for tier, count in per_tier.items():
            RETRY_MOVER_HELD.labels(tier).set(count)
        RETRY_MOVER_WAITING.set(self.hold.count())

    async def _probe(self) -> None:
        """Readiness: does Kafka answer? (a consumer waits quietly while the broker is down)."""
        while True:
            try:
                assert self.consumer is not None
                await asyncio.wait_for(self.consumer.topics(), PROBE_TIMEOUT_S)
                self._kafka_error = ""
            except (KafkaError, TimeoutError) as exc:
                self._kafka_error = f"unreachable ({type(exc).__name__})"
            await asyncio.sleep(PROBE_INTERVAL_S)

    async def _close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        with contextlib.suppress(Exception):
            async with self._lock:
                await self._commit()
        with contextlib.suppress(Exception):
            await self.report.withdraw()
        await self._close_clients()

    async def _close_clients(self) -> None:
        for client in (self.consumer, self.producer):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.stop()
        self.consumer = self.producer = None
