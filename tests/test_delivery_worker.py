"""Delivery worker against the real Kafka broker, with an in-memory fake transport."""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from mailsluice import contracts
from mailsluice.config import KafkaSettings
from mailsluice.contracts import Envelope, EventType
from mailsluice.delivery.dedup import DeliveredCache, warm_from_events
from mailsluice.delivery.scheduler import DestinationLimits, Shaper
from mailsluice.delivery.service import DeliveryService
from mailsluice.delivery.settings import DeliverySettings
from mailsluice.kafka import ensure_topics, standard_topics

pytestmark = pytest.mark.kafka

FINAL = {EventType.DELIVERY, EventType.BOUNCE, EventType.EXPIRATION}


@dataclass(frozen=True)
class Result:
    recipient: str
    code: int
    enhanced: str = ""
    text: str = ""
    remote: str = "fake[127.0.0.1]:25"

    @property
    def kind(self) -> Literal["delivered", "transient", "permanent"]:
        if self.code < 300:
            return "delivered"
        return "permanent" if self.code >= 500 else "transient"


Script = Callable[[Envelope, str], Awaitable[tuple[int, str, str]]]


async def accept_all(_env: Envelope, _rcpt: str) -> tuple[int, str, str]:
    return 250, "2.0.0", "ok"


@dataclass
class FakeTransport:
    script: Script = accept_all
    calls: list[tuple[str, str]] = field(default_factory=list)  # (queue_id, recipient)
    closed: bool = False

    async def send(self, env: Envelope, message: bytes) -> list[Result]:
        out = []
        for rcpt in env.recipients:
            self.calls.append((env.queue_id, rcpt))
            code, enhanced, text = await self.script(env, rcpt)
            out.append(Result(rcpt, code, enhanced, text))
        return out

    async def close(self) -> None:
        self.closed = True


def fake_dsn(
    env: Envelope, message: bytes, failures: list[Any], *, reporting_mta: str, now: float
) -> bytes:
    lines = [f"{f.recipient} {f.code} {f.enhanced}" for f in failures]
    return ("Subject: Undelivered mail\r\n\r\n" + "\r\n".join(lines) + "\r\n").encode()


def new_pool() -> str:
    return "t" + os.urandom(4).hex()


async def setup_pool(kafka_settings: KafkaSettings, pool: str) -> None:
    await ensure_topics(kafka_settings, standard_topics(kafka_settings, [pool], 1024 * 1024))


async def enqueue(
    kafka_settings: KafkaSettings,
    envs: list[Envelope | None],
    body: bytes = b"Subject: t\r\n\r\nhello\r\n",
    pool: str = "",
) -> None:
    """Produce queue records (None: an undecodable record without envelope)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_settings.bootstrap, acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        futures = []
        for env in envs:
            if env is None:
                futures.append(
                    await producer.send(
                        contracts.queue_topic(pool), body, key=b"junk", headers=[("other", b"x")]
                    )
                )
                continue
            futures.append(
                await producer.send(
                    contracts.queue_topic(env.pool),
                    body,
                    key=env.routing_key.encode(),
                    headers=[(contracts.ENVELOPE_HEADER, contracts.encode_envelope(env))],
                )
            )
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def envelope(
    pool: str, n: int, recipients: tuple[str, ...], sender: str = "s@origin.example", **kw: Any
) -> Envelope:
    domain = recipients[0].rpartition("@")[2]
    return Envelope(
        queue_id=f"{pool}-{n:05d}",
        pool=pool,
        sender=sender,
        recipients=recipients,
        routing_key=domain,
        received_at=time.time(),
        **kw,
    )


class EventLog:
    """Reads mailsluice.events in the background, keeping the events of one pool."""

    def __init__(self, kafka_settings: KafkaSettings, pool: str) -> None:
        self.pool = pool
        self.events: list[contracts.Event] = []
        self._consumer = AIOKafkaConsumer(
            contracts.EVENTS_TOPIC,
            bootstrap_servers=kafka_settings.bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
        )
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> EventLog:
        await self._consumer.start()
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._consumer.stop()

    async def _read(self) -> None:
        while True:
            batch = await self._consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for rec in records:
                    event = contracts.decode_event(rec.value)
                    if event.pool == self.pool:
                        self.events.append(event)

    def finals(self) -> collections.Counter[tuple[str, str]]:
        return collections.Counter(
            (e.queue_id, e.recipient) for e in self.events if e.type in FINAL
        )

    def of(self, kind: EventType) -> list[contracts.Event]:
        return [e for e in self.events if e.type == kind]

    async def wait_for(self, cond: Callable[[], bool], within: float = 60.0) -> None:
        deadline = time.monotonic() + within
        while not cond():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; events so far: {len(self.events)}")
            await asyncio.sleep(0.1)


async def committed(kafka_settings: KafkaSettings, pool: str) -> dict[int, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_settings.bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(contracts.consumer_group(pool))
    finally:
        await admin.close()
    return {
        tp.partition: meta.offset
        for tp, meta in offsets.items()
        if tp.topic == contracts.queue_topic(pool)
    }


class Running:
    """A DeliveryService running in a task for the duration of a `async with`."""

    def __init__(self, service: DeliveryService) -> None:
        self.service = service
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> DeliveryService:
        self.task = asyncio.create_task(self.service.run())
        deadline = time.monotonic() + 60
        while not self.service.ready()[0]:
            if self.task.done():
                self.task.result()
            assert time.monotonic() < deadline, self.service.ready()
            await asyncio.sleep(0.05)
        return self.service

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.service.stop()
        await asyncio.wait_for(self.task, 60)


def service_for(
    kafka_settings: KafkaSettings,
    pool: str,
    transport: FakeTransport,
    shaper: Shaper | None = None,
    **settings: Any,
) -> DeliveryService:
    settings.setdefault("commit_interval_s", 0.2)
    return DeliveryService(
        DeliverySettings(pool=pool, **settings),
        kafka_settings,
        transport,
        build_dsn=fake_dsn,
        shaper=shaper,
        consumer_options={"session_timeout_ms": 6000, "heartbeat_interval_ms": 500},
    )


async def test_every_recipient_ends_delivered_bounced_or_expired(kafka: Any) -> None:
    ks = kafka.settings(queue_partitions=3)
    pool = new_pool()
    await setup_pool(ks, pool)
    tried: collections.Counter[str] = collections.Counter()

    async def script(env: Envelope, rcpt: str) -> tuple[int, str, str]:
        tried[f"{env.queue_id}/{rcpt}"] += 1
        local = rcpt.partition("@")[0]
        if local.startswith("hard"):
            return 550, "5.1.1", "no such user"
        if local.startswith("soft") and tried[f"{env.queue_id}/{rcpt}"] == 1:
            return 451, "4.7.1", "try again later"
        if local.startswith("never"):
            return 421, "4.4.2", "closing connection"
        return 250, "2.0.0", "ok"

    transport = FakeTransport(script)
    kinds = ["ok", "ok", "hard", "soft", "never"]

    def make_envs() -> list[Envelope]:
        # received_at is now: made once the worker is ready, so the expiry clock starts here.
        envs = []
        for n in range(40):
            domain = f"d{n % 5}.example"
            rcpts = tuple(f"{kinds[(n + i) % 5]}{i}@{domain}" for i in range(1 + n % 3))
            envs.append(envelope(pool, n, rcpts))
        return envs

    all_rcpts = {(e.queue_id, r) for e in make_envs() for r in e.recipients}
    service = service_for(ks, pool, transport, retry_base_s=0.5, retry_max_s=1.0, expiry_s=4.0)
    async with EventLog(ks, pool) as events, Running(service):
        await enqueue(ks, make_envs())
        await events.wait_for(lambda: all_rcpts <= set(events.finals()), within=90)
        # DSNs for hard bounces and expirations come back through the queue and get delivered.
        failed_msgs = {
            e.queue_id for e in events.events if e.type in (EventType.BOUNCE, EventType.EXPIRATION)
        }
        await events.wait_for(
            lambda: (
                len([e for e in events.of(EventType.DELIVERY) if e.recipient == "s@origin.example"])
                >= len(failed_msgs)
            )
        )
        assert service.mover is not None
        moved = service.mover.moved
    finals = events.finals()
    ours = {k: v for k, v in finals.items() if k in all_rcpts}
    duplicates = sum(v - 1 for v in ours.values())
    assert set(ours) == all_rcpts  # none lost
    assert duplicates == 0
    by_type = collections.Counter(
        e.type for e in events.events if (e.queue_id, e.recipient) in all_rcpts
    )
    expected_never = sum(1 for q, r in all_rcpts if r.startswith("never"))
    expected_hard = sum(1 for q, r in all_rcpts if r.startswith("hard"))
    assert by_type[EventType.EXPIRATION] == expected_never
    assert by_type[EventType.BOUNCE] == expected_hard
    assert by_type[EventType.DELIVERY] == len(all_rcpts) - expected_never - expected_hard
    assert by_type[EventType.TRANSIENT_FAILURE] >= expected_never + sum(
        1 for q, r in all_rcpts if r.startswith("soft")
    )
    assert moved > 0  # retries really went through the delay topics and came back
    bounce = events.of(EventType.BOUNCE)[0]
    assert (bounce.code, bounce.enhanced, bounce.text) == (550, "5.1.1", "no such user")
    # A soft-failed recipient was retried after the delay, not before.
    soft = [e for e in events.events if e.recipient.startswith("soft")]
    first = {}
    for e in sorted(soft, key=lambda e: e.ts):
        first.setdefault((e.queue_id, e.recipient), e.ts)
    for e in soft:
        if e.type == EventType.DELIVERY:
            assert e.ts - first[(e.queue_id, e.recipient)] >= 0.45
            assert e.attempt == 2
    # No DSN back to a DSN (null sender).
    assert all(
        e.sender != "" for e in events.events if e.type in (EventType.BOUNCE, EventType.EXPIRATION)
    )


async def test_out_of_order_completion_never_commits_past_unfinished(kafka: Any) -> None:
    ks = kafka.settings(queue_partitions=1)
    pool = new_pool()
    await setup_pool(ks, pool)
    release = asyncio.Event()

    async def script(env: Envelope, rcpt: str) -> tuple[int, str, str]:
        if rcpt.endswith("@slow.example"):
            await release.wait()
        return 250, "2.0.0", "ok"

    transport = FakeTransport(script)
    envs: list[Envelope | None] = [envelope(pool, 0, ("a@slow.example",))]
    envs += [envelope(pool, n, (f"b@fast{n % 3}.example",)) for n in range(1, 9)]
    envs.append(None)  # undecodable: skipped and committed past, not a crash loop
    envs.append(envelope(pool, 10, ("c@fast0.example",)))
    service = service_for(ks, pool, transport, short_horizon_s=60)
    async with EventLog(ks, pool) as events, Running(service):
        await enqueue(ks, envs, pool=pool)
        await events.wait_for(lambda: len(events.of(EventType.DELIVERY)) == 9)
        await asyncio.sleep(1.0)  # several commit intervals
        assert (await committed(ks, pool)).get(0, 0) == 0
        release.set()
        await events.wait_for(lambda: len(events.of(EventType.DELIVERY)) == 10)
        deadline = time.monotonic() + 10
        while (await committed(ks, pool)).get(0) != 11:
            assert time.monotonic() < deadline, await committed(ks, pool)
            await asyncio.sleep(0.2)
    assert len(transport.calls) == 10


async def test_throttled_destination_goes_through_delay_topic(kafka: Any) -> None:
    ks = kafka.settings(queue_partitions=1)
    pool = new_pool()
    await setup_pool(ks, pool)
    sent_at: dict[str, list[float]] = collections.defaultdict(list)

    async def script(env: Envelope, rcpt: str) -> tuple[int, str, str]:
        sent_at[env.routing_key].append(time.monotonic())
        return 250, "2.0.0", "ok"

    transport = FakeTransport(script)
    envs = [envelope(pool, n, (f"r{n}@slow.example",)) for n in range(12)]
    envs += [envelope(pool, 100 + n, (f"r{n}@fast.example",)) for n in range(30)]

    def policy(key: str) -> DestinationLimits:
        if key == "slow.example":
            return DestinationLimits(max_concurrency=10, rate=4.0, burst=1)
        return DestinationLimits(max_concurrency=10, rate=1000.0, burst=100)

    service = service_for(ks, pool, transport, Shaper(policy), short_horizon_s=0.5)
    async with EventLog(ks, pool) as events, Running(service):
        await enqueue(ks, envs)
        await events.wait_for(lambda: len(events.finals()) == 42, within=90)
    assert len(events.of(EventType.TRANSIENT_FAILURE)) == 0
    assert sum(events.finals().values()) == 42
    # The rate of the slow destination held: 12 messages at 4/s with burst 1 span >= 2.75 s.
    slow = sorted(sent_at["slow.example"])
    assert slow[-1] - slow[0] >= 2.7
    gaps = [b - a for a, b in itertools.pairwise(slow)]
    assert min(gaps) >= 0.24
    # The fast destination in the same partition was not held up by the slow one.
    fast = sorted(sent_at["fast.example"])
    assert len(fast) == 30
    assert fast[-1] - fast[0] < 1.0
    assert fast[-1] < slow[-1]


async def test_sigterm_drain_finishes_in_flight_and_commits(kafka: Any) -> None:
    ks = kafka.settings(queue_partitions=1)
    pool = new_pool()
    await setup_pool(ks, pool)
    started = asyncio.Event()

    async def script(env: Envelope, rcpt: str) -> tuple[int, str, str]:
        if rcpt.startswith("slow"):
            started.set()
            await asyncio.sleep(1.0)
        return 250, "2.0.0", "ok"

    transport = FakeTransport(script)
    envs = [envelope(pool, 0, ("slow@a.example",))]
    service = service_for(ks, pool, transport, drain_timeout_s=10)
    async with EventLog(ks, pool) as events:
        async with Running(service):
            await enqueue(ks, envs)
            await asyncio.wait_for(started.wait(), 30)
        # Left the block: stop() + drain returned; the send had finished and was committed.
        assert (await committed(ks, pool)).get(0) == 1
        await events.wait_for(lambda: len(events.of(EventType.DELIVERY)) == 1)
    assert service.worker.consumer is not None


async def test_dedup_skips_recipients_already_delivered(kafka: Any) -> None:
    ks = kafka.settings(queue_partitions=1)
    pool = new_pool()
    await setup_pool(ks, pool)
    transport = FakeTransport()
    env = envelope(pool, 0, ("a@x.example", "b@x.example"))
    service = service_for(ks, pool, transport)
    service.worker.dedup.add(env.queue_id, "a@x.example")
    async with EventLog(ks, pool) as events, Running(service):
        await enqueue(ks, [env])
        await events.wait_for(lambda: len(events.of(EventType.DELIVERY)) == 1)
    assert transport.calls == [(env.queue_id, "b@x.example")]


async def test_dedup_warm_up_reads_back_delivery_events(kafka: Any) -> None:
    ks = kafka.settings()
    pool = new_pool()
    await setup_pool(ks, pool)
    producer = AIOKafkaProducer(bootstrap_servers=ks.bootstrap, acks="all")
    await producer.start()
    try:
        for n, kind in enumerate((EventType.DELIVERY, EventType.BOUNCE, EventType.DELIVERY)):
            event = contracts.Event(type=kind, queue_id=f"Q{n}", pool=pool, recipient=f"r{n}@x")
            await producer.send_and_wait(
                contracts.EVENTS_TOPIC, contracts.encode_event(event), key=b"Q"
            )
        other = contracts.Event(
            type=EventType.DELIVERY, queue_id="Q9", pool="other", recipient="a@x"
        )
        await producer.send_and_wait(contracts.EVENTS_TOPIC, contracts.encode_event(other))
    finally:
        await producer.stop()
    cache = DeliveredCache(100)
    added = await warm_from_events(ks, pool, cache, since=time.time() - 60, budget_s=20)
    assert added == 2
    assert cache.seen("Q0", "r0@x")
    assert cache.seen("Q2", "r2@x")
    assert not cache.seen("Q1", "r1@x")
    assert not cache.seen("Q9", "a@x")


async def test_two_workers_and_a_rebalance_lose_nothing(kafka: Any) -> None:
    ks = kafka.settings(queue_partitions=4)
    pool = new_pool()
    await setup_pool(ks, pool)

    async def slowish(_env: Envelope, _rcpt: str) -> tuple[int, str, str]:
        await asyncio.sleep(0.02)
        return 250, "2.0.0", "ok"

    first, second = FakeTransport(slowish), FakeTransport(slowish)
    envs = [envelope(pool, n, (f"r{n}@d{n % 8}.example",)) for n in range(200)]
    keys = {(e.queue_id, e.recipients[0]) for e in envs}
    # A small memory bound: the worker pauses its partitions instead of holding everything.
    one = service_for(ks, pool, first, max_inflight=8, dest_max_concurrency=1)
    two = service_for(ks, pool, second, max_inflight=8, dest_max_concurrency=1)
    async with EventLog(ks, pool) as events, Running(one):
        await enqueue(ks, envs)
        await events.wait_for(lambda: len(events.finals()) >= 40)
        async with Running(two):  # joins: a rebalance moves partitions while sends run
            await events.wait_for(lambda: len(events.finals()) >= 120)
        await events.wait_for(lambda: keys <= set(events.finals()), within=90)
    assert len(second.calls) > 0
    assert len(first.calls) + len(second.calls) >= len(keys)
    finals = events.finals()
    duplicates = sum(finals[k] - 1 for k in keys)
    assert duplicates <= 16  # at most what was in flight at the two rebalances
    assert one.worker._held == 0


async def test_shaper_bounce_rule_bounces_instead_of_retrying(kafka: Any) -> None:
    ks = kafka.settings(queue_partitions=1)
    pool = new_pool()
    await setup_pool(ks, pool)

    async def deferred(_env: Envelope, _rcpt: str) -> tuple[int, str, str]:
        return 421, "4.7.0", "retrying will NOT succeed"

    class RuleShaper(Shaper):
        def should_bounce(self, key: str, reply: tuple[int, str, str]) -> bool:
            return "NOT succeed" in reply[2]

    shaper = RuleShaper(lambda _k: DestinationLimits(10, 1000.0, 100))
    service = service_for(ks, pool, FakeTransport(deferred), shaper)
    async with EventLog(ks, pool) as events, Running(service):
        await enqueue(ks, [envelope(pool, 0, ("x@y.example",))])
        # The bounce, then the DSN to the sender (bounced too by the same rule; no DSN of it).
        await events.wait_for(lambda: len(events.of(EventType.BOUNCE)) == 2)
    bounce = next(e for e in events.of(EventType.BOUNCE) if e.recipient == "x@y.example")
    assert (bounce.code, bounce.enhanced) == (521, "5.7.0")
    assert events.of(EventType.TRANSIENT_FAILURE) == []
