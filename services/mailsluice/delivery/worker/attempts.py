"""The per-record side of the delivery worker: deliver, conclude, defer or overflow, count, and
produce the outcome records with retry.

A record is finished (its offset may be committed) only after every record its outcome produces
(events, retry, bounce, overflow copy) is acknowledged; the worker's Kafka side (consumer.py) owns
the consumer, the offset ledgers and the memory bound, and hands its `finish` and `release`
callbacks in. Every reply of a send goes to the shaper (`observe`), which may slow the
destination down at once; a bounce rule turns a transient reply into a bounce.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from mailsluice.contracts.envelope import (
    Envelope,
    envelope_from_headers,
)
from mailsluice.delivery.shaping.engine import PolicyShaper
from mailsluice.delivery.shaping.scheduler import Deferral, Job, Scheduler
from mailsluice.delivery.transport.replies import (
    S451_CONNECTION_RATE,
    S451_THROTTLED_EXPIRED,
    S451_TRANSPORT_RAISED,
    with_detail,
)
from mailsluice.delivery.worker import finishing, outcomes, suppressed
from mailsluice.delivery.worker.dedup import DeliveredCache, warm_from_events
from mailsluice.delivery.worker.pipeline import OutcomePipeline
from mailsluice.delivery.worker.settings import DeliverySettings
from mailsluice.kafka.producers import RenewingProducer
from mailsluice.kafka.retrying import until_kafka_answers
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.metrics.delivery import Delivery as m
from mailsluice.metrics.shaping import ShapingFlow as flow_metrics

if TYPE_CHECKING:
    from prometheus_client import Counter

log = logging.getLogger(__name__)

# Produce retries back off from this up to that while Kafka is unavailable.
PRODUCE_BACKOFF_FIRST_S = 0.2
PRODUCE_BACKOFF_MAX_S = 5.0
# A send refused by our own connection rate (no connection could be opened), or waiting for
# another copy of its message in flight, queues again this much later: it was no attempt, so
# it neither counts nor goes through a retry tier.
CONNECTION_RATE_REQUEUE_S = 1.0


class TransportLike(Protocol):
    async def send(
        self, env: Envelope, message: bytes, *, source: str = ""
    ) -> Sequence[outcomes.ResultLike]: ...
    async def close(self) -> None: ...


@dataclass(eq=False)
class Item:
    """One queue record held by the worker."""

    tp: TopicPartition
    offset: int
    generation: int
    env: Envelope
    value: bytes


def read_envelope(pool: str, record: ConsumerRecord) -> Envelope | None:
    """A queue record's envelope; None (logged and counted) when it cannot be decoded: such a
    record is skipped rather than crash-looping every worker."""
    try:
        return envelope_from_headers(record.headers)
    except ValueError as exc:
        log.error(
            "skipping undecodable record %s[%d]@%d: %s",
            record.topic,
            record.partition,
            record.offset,
            exc,
        )
        m.UNDECODABLE.labels(pool).inc()
        return None


def transactional(item: Item) -> bool:
    """Transactional mail overtakes bulk mail queued for the same destination."""
    return item.env.stream == "transactional"


def default_dsn_builder() -> outcomes.DsnBuilder | None:
    """dsn.build_dsn from the transport side, if present."""
    try:
        dsn = importlib.import_module("mailsluice.delivery.worker.dsn")
    except ImportError:
        log.warning("mailsluice.delivery.worker.dsn missing: bounce messages are off")
        return None
    builder: outcomes.DsnBuilder = dsn.build_dsn
    return builder


class Attempts:
    """Delivery attempts of queued records, and what their outcomes produce."""

    def __init__(
        self,
        settings: DeliverySettings,
        transport: TransportLike,
        shaper: PolicyShaper,
        scheduler: Scheduler[Item],
        dedup: DeliveredCache,
        *,
        finish: Callable[[Item], None],
        release: Callable[[Item], None],
        wake: Callable[[], None],
        kafka_state: Callable[[str], None],
        build_dsn: outcomes.DsnBuilder | None,
        wall: Callable[[], float],
        mono: Callable[[], float],
        rng: random.Random,
    ) -> None:
        self.settings = settings
        self.pool = settings.pool
        self.transport = finishing.wrap(transport, shaper, mono)  # List-Unsubscribe per rcpt
        self.shaper = shaper
        self.scheduler = scheduler
        self.dedup = dedup
        self.finish = finish
        self.release = release
        self.wake = wake
        self.kafka_state = kafka_state  # "" once Kafka acknowledged, else the error's name
        self.build_dsn = build_dsn
        self.wall = wall
        self.mono = mono
        self.rng = rng
        self.producers: RenewingProducer | None = None  # set by the worker once started
        self.screen = suppressed.Screen(self)  # the service gives it the suppression list
        self.pipeline = OutcomePipeline(settings.outcome_depth, shaper.slots)

    async def remember_delivered(self, kafka: KafkaSettings) -> None:
        """After gaining partitions: records past the previous owner's last commit come again;
        the recent delivery events say which recipients already have the message."""
        try:
            added = await warm_from_events(
                kafka,
                self.pool,
                self.dedup,
                since=self.wall() - self.settings.dedup_warmup_s,
                budget_s=self.settings.dedup_warmup_budget_s,
            )
            log.info("dedup warm-up: %d delivered recipients remembered", added)
        except (KafkaError, OSError) as exc:
            log.warning("dedup warm-up failed (%s); duplicates may follow", exc)

    def started(self, job: Job[Item], now: float) -> None:
        """A job left the scheduler: how long shaping held it past its ready time."""
        flow_metrics.delay(self.pool, self.shaper.provider(job.key), now - job.ready_at)

    async def deliver(self, job: Job[Item]) -> None:
        item = job.item
        env = await self.screen(job)  # suppressed recipients leave the item's envelope
        claim = self.dedup.claim(env.dedup_id, env.recipients)
        todo, done = claim or ([], [])
        freed = False  # the slot went to the next message before the acknowledgements
        try:
            if claim is None:
                await self.requeue(job, m.DUPLICATE_WAITS)
                return
            if done:
                m.DUPLICATES_SKIPPED.labels(self.pool).inc(len(done))
                log.debug(
                    "skipping %d already delivered recipients",
                    len(done),
                    extra={"queue_id": env.queue_id},
                )
            if not todo:
                self.finish(item)
                return
            send_env = env.model_copy(update={"recipients": tuple(todo)}) if done else env
            try:
                results, held = await self.send(send_env, item.value, source=job.source)
            except BaseException:
                self.release(item)
                raise
            if results and all(
                (r.code, r.enhanced, r.text) == S451_CONNECTION_RATE for r in results
            ):
                await self.requeue(job, m.CONNECTION_RATE_REQUEUES)
                return
            expired = self.wall() > env.received_at + self.settings.expiry_s
            if results and all(r.recipient in held for r in results) and not expired:
                await self.hold_again(job, send_env)
                return
            if expired:
                held = frozenset()  # the last deferral expires them like any other
            for res in results:
                if res.kind == "delivered":
                    self.dedup.add(env.dedup_id, res.recipient)
            # Within the depth per slot (pipeline.py) the slot goes to the next message now.
            if freed := self.pipeline.enter(job.key, job.source):
                self.scheduler.done(job, self.mono())
                self.wake()
            try:
                await self.conclude(item, results, send_env, held=held)
            finally:
                if freed:
                    self.pipeline.leave(job.key, job.source)
        finally:
            self.dedup.unclaim(env.dedup_id, todo)
            if not freed:
                self.scheduler.done(job, self.mono())
            self.wake()

    async def requeue(self, job: Job[Item], counter: Counter) -> None:
        """Back into the destination's queue shortly, untried (or to a delay topic past the
        short horizon)."""
        now = self.mono()
        deferral = self.scheduler.push(
            job.key, job.item, now, ready_at=now + CONNECTION_RATE_REQUEUE_S
        )
        counter.labels(self.pool).inc()
        if deferral is not None:
            await self.defer(deferral)

    async def hold_again(self, job: Job[Item], env: Envelope) -> None:
        """The destination deferred every recipient for its own limits (rate, connections,
        messages per connection, reputation, block): the message waits for capacity again,
        in memory or in a delay topic, with no attempt counted and no failure schedule."""
        item = job.item
        if env is not item.env:  # recipients already delivered are not sent again
            item = Item(item.tp, item.offset, item.generation, env, item.value)
        now = self.mono()
        deferral = self.scheduler.push(job.key, item, now)
        m.HELD_REQUEUES.labels(self.pool).inc()
        if deferral is not None:
            await self.defer(deferral)

    async def conclude(
        self,
        item: Item,
        results: Sequence[outcomes.ResultLike],
        env: Envelope | None = None,
        held: frozenset[str] = frozenset(),
    ) -> None:
        """Produce an attempt's outcome records; the record is finished once they are acked.
        Recipients in `held` wait for the destination's capacity (see hold_again)."""
        try:
            key = (env or item.env).routing_key
            wait = self.shaper.estimate_wait(key, self.mono(), 0) if held else 0.0
            plan = outcomes.plan_outcome(
                env or item.env,
                item.value,
                list(results),
                now=self.wall(),
                settings=self.settings,
                build_dsn=self.build_dsn,
                rng=self.rng,
                held=held,
                held_until=self.wall() + wait,
            )
            await self.produce_all(plan.produces)
            self.count(plan)
        except BaseException:
            self.release(item)
            raise
        self.finish(item)

    async def send(
        self, env: Envelope, value: bytes, *, source: str = ""
    ) -> tuple[list[outcomes.ResultLike], frozenset[str]]:
        """The results of one send, after the shaper heard them: a transient reply the
        provider says will never succeed becomes a bounce; the recipients the destination
        deferred for its own limits come back apart (they wait for capacity)."""
        started = self.mono()
        try:
            results = await self.transport.send(env, value, source=source)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # The transport promises not to raise; if it does, retry later rather than lose it.
            log.exception("transport failed", extra={"queue_id": env.queue_id})
            reply = with_detail(S451_TRANSPORT_RAISED, type(exc).__name__)
            results = [outcomes.LocalResult(r, *reply) for r in env.recipients]
        m.SEND_SECONDS.labels(self.pool).observe(self.mono() - started)
        verdict = self.shaper.observe(env.routing_key, self.mono(), results)
        out = [
            outcomes.as_permanent(r)
            if r.kind == "transient" and r.recipient in verdict.bounce
            else r
            for r in results
        ]
        return out, verdict.held

    async def defer(self, deferral: Deferral[Item]) -> None:
        if deferral.overflow_pool:
            await self.overflow(deferral.job.item, deferral.overflow_pool)
            return
        item = deferral.job.item
        env = item.env
        now, horizon = self.wall(), self.settings.short_horizon_s
        due = outcomes.throttled_due(
            now, deferral.wait, horizon, env.received_at + self.settings.expiry_s
        )
        if due is None:
            # Held until its expiry passed: a failed attempt, which expires it.
            expired = [outcomes.LocalResult(r, *S451_THROTTLED_EXPIRED) for r in env.recipients]
            await self.conclude(item, expired)
            return
        try:
            record = outcomes.plan_throttled(
                item.env,
                item.value,
                now=now,
                not_before=due,
                held=deferral.held,
                reason=deferral.reason,
            )
            await self.produce_all([record])
            tier = record.topic.rsplit(".", 1)[-1]
            m.RETRIES.labels(self.pool, tier, "throttled").inc()
            self.finish(item)
        except BaseException:
            self.release(item)
            raise

    async def overflow(self, item: Item, pool: str) -> None:
        """Over the warm-up cap with overflow configured: the message moves to `pool`'s queue
        (finished here once that copy is acknowledged, so nothing is lost or kept twice)."""
        try:
            await self.produce_all([outcomes.overflow_record(item.env, item.value, pool)])
        except BaseException:
            self.release(item)
            raise
        flow_metrics.OVERFLOW.labels(self.pool, pool).inc()
        log.info(
            "warm-up cap reached: message moved to pool %s",
            pool,
            extra={"queue_id": item.env.queue_id},
        )
        self.finish(item)

    def count(self, plan: outcomes.Plan) -> None:
        for result, rcpts in (
            ("delivered", plan.delivered),
            ("deferred", plan.deferred),
            ("bounced", plan.bounced),
            ("expired", plan.expired),
        ):
            if rcpts:
                m.RECIPIENTS.labels(self.pool, result).inc(len(rcpts))
        overall = (
            "expired"
            if plan.expired
            else "bounced"
            if plan.bounced
            else "deferred"
            if plan.deferred
            else "delivered"
        )
        m.ATTEMPTS.labels(self.pool, overall).inc()
        if plan.retry_tier:
            m.RETRIES.labels(self.pool, plan.retry_tier, "failure").inc()
        if plan.dsn:
            m.DSN_SENT.labels(self.pool).inc()

    async def produce_all(self, records: list[outcomes.Produce]) -> None:
        """Produce every record and wait for all acks; retry while Kafka is unavailable, each
        time with a fresh producer (a failed idempotent one may never send again)."""
        assert self.producers is not None
        producers = self.producers
        sends = [(r.topic, r.value, r.key, tuple(r.headers)) for r in records]
        await until_kafka_answers(
            lambda: producers.send_all(sends),
            retry_s=PRODUCE_BACKOFF_FIRST_S,
            max_retry_s=PRODUCE_BACKOFF_MAX_S,
            on_failure=self._produce_failed,
            errors=(KafkaError,),
        )
        self.kafka_state("")

    def _produce_failed(self, exc: Exception) -> None:
        self.kafka_state(type(exc).__name__)
        log.warning("producing outcome records failed (%s); retrying", exc)
