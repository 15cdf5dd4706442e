"""The delivery worker: consumes a pool's queue topic and delivers, many destinations at once.

This is the Kafka side: consumer, rebalances, fetch with pause/resume, offset commits. Fetched
records wait in memory under the shaping limits (dispatch.py); the per-record side (deliver,
conclude, defer, count, produce) is attempts.py.

Records finish out of order, so each partition's offset ledger commits only up to the lowest
unfinished offset (commits.py): periodically, soon after the first records of newly gained
partitions finish, when partitions are revoked, and at shutdown. A record is finished only
after every record its outcome produces (events, retry, bounce) is acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError

from mailsluice.contracts.topics import consumer_group, queue_topic
from mailsluice.delivery.shaping.engine import PolicyShaper
from mailsluice.delivery.worker import outcomes
from mailsluice.delivery.worker.attempts import (
    Attempts,
    Item,
    TransportLike,
    default_dsn_builder,
    read_envelope,
)
from mailsluice.delivery.worker.commits import Commits
from mailsluice.delivery.worker.dedup import DeliveredCache
from mailsluice.delivery.worker.dispatch import Dispatch, scheduler_for
from mailsluice.delivery.worker.settings import DeliverySettings
from mailsluice.delivery.worker.shaper import default_shaper
from mailsluice.kafka.clients import BATCHED_FETCH, make_consumer, make_producer
from mailsluice.kafka.ledger import Ledger
from mailsluice.kafka.producers import RenewingProducer
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.metrics.delivery import Delivery as m
from mailsluice.observability.progress import Progress

log = logging.getLogger(__name__)

# Resume fetching when the memory bound has this much room again (hysteresis).
RESUME_FRACTION = 0.8
# Longest a rebalance waits for in-flight sends of revoked partitions before committing.
REVOKE_WAIT_S = 5.0
# How often the worker checks that Kafka answers (readiness).
PROBE_INTERVAL_S = 5.0

__all__ = [
    "Item",
    "LeaveCallback",
    "ShareCallback",
    "TransportLike",
    "Worker",
    "default_dsn_builder",
    "default_shaper",
]

# Told (partitions assigned to this worker, partitions of the pool's queue topic) after every
# rebalance, e.g. ShapingRuntime.set_share for the warm-up caps.
ShareCallback = Callable[[int, int], None]
# Awaited at shutdown after the last sends ended and before the consumer leaves its group, e.g.
# ShapingRuntime.flush: what the next owner of the partitions reads must be out by then.
LeaveCallback = Callable[[], Awaitable[None]]
# Longest the worker waits for that before it leaves anyway.
LEAVE_WAIT_S = 5.0


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: Worker) -> None:
        self._worker = worker

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._worker.on_revoked(list(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self._worker.on_assigned(list(assigned))


class Worker:
    def __init__(
        self,
        settings: DeliverySettings,
        kafka: KafkaSettings,
        transport: TransportLike,
        *,
        shaper: PolicyShaper | None = None,
        build_dsn: outcomes.DsnBuilder | None = None,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        consumer_options: dict[str, Any] | None = None,
        client_id: str = "mailsluice-delivery",
        on_share: ShareCallback | None = None,
        on_leave: LeaveCallback | None = None,
    ) -> None:
        self.settings = settings
        self.kafka = kafka
        self.pool = settings.pool
        self.topic = queue_topic(self.pool)
        self.shaper = shaper if shaper is not None else default_shaper(settings, wall)
        self.scheduler = scheduler_for(self.shaper, settings.short_horizon_s)
        self.wall, self.mono = wall, mono
        self.ledger = Ledger()
        self.dedup = DeliveredCache(settings.dedup_size)
        self.commits = Commits(self.pool, self.ledger, settings.commit_interval_s)
        self.consumer: AIOKafkaConsumer | None = None
        self.producers: RenewingProducer | None = None
        self._generation: dict[TopicPartition, int] = {}
        self._owned: set[TopicPartition] = set()
        self._held = 0  # items in memory: queued, sending or producing outcomes
        self._warm = asyncio.Event()
        self._warm.set()
        self._room = asyncio.Event()
        self._stopping = asyncio.Event()
        self._paused = False
        self._assigned_once = False
        self._kafka_error: str = ""
        self._client_id, self._consumer_options = client_id, consumer_options or {}
        self._on_share, self._on_leave = on_share, on_leave
        self.progress = Progress(settings.stall_s, lambda: self._held, mono)
        wake = asyncio.Event()
        self.attempts = Attempts(
            settings,
            transport,
            self.shaper,
            self.scheduler,
            self.dedup,
            finish=self._finish,
            release=self._release,
            wake=wake.set,
            kafka_state=self._set_kafka_error,
            build_dsn=build_dsn,
            wall=wall,
            mono=mono,
            rng=rng or random.Random(),
        )
        self.dispatch = Dispatch(self.scheduler, self.attempts, wake, mono)

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self.producers = RenewingProducer(
            lambda: make_producer(
                self.kafka,
                max_message_size=self.settings.max_message_size,
                client_id=f"{self._client_id}-producer",
            ),
            name="delivery",
        )
        await self.producers.get()
        self.attempts.producers = self.producers
        self.consumer = make_consumer(
            self.kafka,
            group_id=consumer_group(self.pool),
            client_id=self._client_id,
            **{**BATCHED_FETCH, **self._consumer_options},
        )
        self.consumer.subscribe([self.topic], listener=_Listener(self))
        await self.consumer.start()

    def stop(self) -> None:
        """Ask the worker to drain and exit (safe from a signal handler)."""
        self._stopping.set()
        self._warm.set()
        self.dispatch.wake.set()
        self._room.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def ready(self) -> tuple[bool, str]:
        if self._kafka_error:
            return False, f"kafka: {self._kafka_error}"
        if not self._assigned_once:
            return False, "waiting for partition assignment"
        if self.stopping:
            return False, "draining"
        return True, f"{self._held} messages in memory"

    async def run(self) -> None:
        """Fetch and deliver until stop(), then drain and close the Kafka clients."""
        if self.consumer is None:
            await self.start()
        dispatcher = asyncio.create_task(
            self.dispatch.run(self._stopping), name="delivery-dispatch"
        )
        assert self.consumer is not None
        committer = asyncio.create_task(self.commits.loop(self.consumer), name="delivery-commit")
        prober = asyncio.create_task(self._probe_loop(), name="delivery-probe")
        try:
            await self._fetch_loop()
        finally:
            await self._drain()
            for task in (dispatcher, committer, prober):
                task.cancel()
            await asyncio.gather(dispatcher, committer, prober, return_exceptions=True)
            await self._commit()
            await self._before_leaving()
            await self._close()

    async def _before_leaving(self) -> None:
        if self._on_leave is None:
            return
        try:
            await asyncio.wait_for(self._on_leave(), LEAVE_WAIT_S)
        except Exception:  # the worker leaves anyway; the next owner starts from older state
            log.exception("before leaving the consumer group")

    async def _close(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()
        if self.producers is not None:
            await self.producers.stop()

    async def _drain(self) -> None:
        """No new work; hand back queued records; let sends finish within the drain timeout."""
        self._stopping.set()
        if self.consumer is not None:
            with contextlib.suppress(Exception):
                self.consumer.pause(*self.consumer.assignment())
        handed_back = self.dispatch.take_back()
        self._held -= handed_back
        if handed_back:
            log.info("drain: handed back %d queued messages", handed_back)
        await self.dispatch.drain(self.settings.drain_timeout_s)
        m.INFLIGHT.labels(self.pool).set(self._held)

    # --- rebalance --------------------------------------------------------------------------

    async def on_assigned(self, assigned: list[TopicPartition]) -> None:
        # Ledgers first: the consumer may hand out records of these partitions while this
        # callback still awaits below, and the fetch loop holds them until warm-up is done.
        for tp in assigned:
            self._generation[tp] = self._generation.get(tp, 0) + 1
            self.ledger.partition(tp)
        gained = set(assigned) - self._owned
        self._owned = set(assigned)
        self.commits.gained(gained)
        self._paused = False
        self._tell_share(self._owned)
        if gained and self.settings.dedup_warmup_s > 0 and self.settings.dedup_size > 0:
            # Records past the previous owner's last commit come again; their delivery events
            # say which recipients already have the message.
            self._warm.clear()
            try:
                await self.attempts.remember_delivered(self.kafka)
            finally:
                self._warm.set()
        self._assigned_once = True
        log.info("assigned partitions %s", sorted(tp.partition for tp in assigned))

    async def on_revoked(self, revoked: list[TopicPartition]) -> None:
        gone = set(revoked)
        if not gone:
            return
        # Sends already under way get a moment to finish, so the next owner repeats less.
        await self.dispatch.settle(gone, min(REVOKE_WAIT_S, self.settings.drain_timeout_s))
        await self._commit(only=gone)
        dropped = self.dispatch.take_back(gone)
        self._held -= dropped
        self.ledger.revoke(gone)
        for tp in gone:
            self._generation[tp] = self._generation.get(tp, 0) + 1
        self.commits.revoked(gone)
        self._tell_share(self._owned - gone)
        self._room.set()
        log.info(
            "revoked partitions %s (%d queued messages left to the next owner)",
            sorted(tp.partition for tp in gone),
            dropped,
        )

    def _tell_share(self, owned: set[TopicPartition]) -> None:
        """This worker's share of the queue topic's partitions, to whoever divides by it."""
        if self._on_share is None or self.consumer is None:
            return
        total = self.consumer.partitions_for_topic(self.topic)
        if total:
            self._on_share(sum(1 for tp in owned if tp.topic == self.topic), len(total))

    # --- fetch ------------------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        assert self.consumer is not None
        limit = self.settings.max_inflight
        while not self.stopping:
            room = limit - self._held
            if room <= 0:
                self._pause()
                self._room.clear()
                await self._room.wait()
                continue
            if self._paused and self._held <= limit * RESUME_FRACTION:
                self._resume()
            try:
                batch = await self.consumer.getmany(timeout_ms=200, max_records=min(room, 500))
            except KafkaError as exc:
                self._kafka_error = type(exc).__name__
                log.warning("fetch failed: %s", exc)
                await asyncio.sleep(1.0)
                continue
            # Records that arrive while a dedup warm-up runs wait for it.
            await self._warm.wait()
            for tp, records in batch.items():
                for record in records:
                    self._accept(tp, record)
            if batch:
                self.dispatch.wake.set()

    def _pause(self) -> None:
        if not self._paused and self.consumer is not None:
            self.consumer.pause(*self.consumer.assignment())
            self._paused = True
            m.PAUSED.labels(self.pool).set(1)

    def _resume(self) -> None:
        if self._paused and self.consumer is not None:
            self.consumer.resume(*self.consumer.assignment())
            self._paused = False
            m.PAUSED.labels(self.pool).set(0)

    def _accept(self, tp: TopicPartition, record: ConsumerRecord) -> None:
        if not self.ledger.owns(tp):
            if tp not in self.consumer.assignment():  # type: ignore[union-attr]
                return  # fetched just before a revocation; the next owner reads it again
            # Assigned but not yet announced to the listener: never drop a fetched record.
            self.ledger.partition(tp)
        self.ledger.add(tp, record.offset)
        env = read_envelope(self.pool, record)
        if env is None:  # skipped (and committed past): no worker could read it
            self.ledger.finish(tp, record.offset)
            return
        item = Item(tp, record.offset, self._generation.get(tp, 0), env, record.value or b"")
        self._held += 1
        mono_now, wall_now = self.mono(), self.wall()
        self.dispatch.push(item, mono_now, mono_now + max(0.0, env.not_before - wall_now))
        m.INFLIGHT.labels(self.pool).set(self._held)

    # --- outcomes ---------------------------------------------------------------------------

    def _finish(self, item: Item) -> None:
        """The record is done: its offset may be committed."""
        if self._generation.get(item.tp) == item.generation:
            self.ledger.finish(item.tp, item.offset)
            self.commits.finished(item.tp)
        self.progress.made()
        self._release(item)

    def _release(self, item: Item) -> None:
        self._held -= 1
        m.INFLIGHT.labels(self.pool).set(self._held)
        self._room.set()

    # --- Kafka housekeeping ---------------------------------------------------------------

    async def _probe_loop(self) -> None:
        """Readiness: a metadata request every few seconds tells whether Kafka is reachable
        (the consumer itself just returns nothing while the brokers are down)."""
        assert self.consumer is not None
        while True:
            try:
                await self.consumer.topics()
                if self._kafka_error.startswith("unreachable"):
                    self._kafka_error = ""
            except KafkaError as exc:
                self._kafka_error = f"unreachable ({type(exc).__name__})"
            await asyncio.sleep(PROBE_INTERVAL_S)

    def _set_kafka_error(self, error: str) -> None:
        self._kafka_error = error

    async def _commit(self, only: set[TopicPartition] | None = None) -> None:
        if self.consumer is not None:
            await self.commits.commit(self.consumer, only)
