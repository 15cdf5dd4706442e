"""Delivery worker against the real Kafka broker, with an in-memory fake transport."""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
from typing import Any

from aiokafka import AIOKafkaProducer
from support.delivery_worker import (
    EventLog,
    FakeTransport,
    Running,
    committed,
    committed_to_end,
    enqueue,
    envelope,
    new_pool,
    service_for,
    setup_pool,
)
from support.eventually import eventually
from support.shaping import uniform

from mailsluice.contracts.envelope import Envelope
from mailsluice.contracts.events import Event, EventType, encode_event
from mailsluice.contracts.topics import EVENTS_TOPIC
from mailsluice.delivery.shaping.limiter import Rate
from mailsluice.delivery.worker.attempts import transactional
from mailsluice.delivery.worker.consumer import Worker
from mailsluice.delivery.worker.dedup import DeliveredCache, warm_from_events
from mailsluice.delivery.worker.settings import DeliverySettings
from mailsluice.kafka.settings import KafkaSettings


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
        await events.expect_final(all_rcpts, within=90)
        # DSNs for hard bounces and expirations come back through the queue and get delivered.
        failed_msgs = {
            e.queue_id for e in events.events if e.type in (EventType.BOUNCE, EventType.EXPIRATION)
        }
        await eventually(
            lambda: (
                len([e for e in events.of(EventType.DELIVERY) if e.recipient == "s@origin.example"])
                >= len(failed_msgs)
            ),
            within=60,
            what="a DSN delivered for each failed message",
            detail=events.summary,
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
        await events.expect(EventType.DELIVERY, 9)
        # Several commit passes after the nine: none may commit past the unfinished first record.
        commits = service.worker.commits
        passes = commits.rounds + 5
        await eventually(lambda: commits.rounds >= passes, within=30, what="five commit passes")
        assert (await committed(ks, pool)).get(0, 0) == 0
        release.set()
        await events.expect(EventType.DELIVERY, 10)
        await committed_to_end(ks, pool, within=10)
        assert (await committed(ks, pool)).get(0) == 11
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

    shaper = uniform(10, 1000.0, 100, domains={"slow.example": (10, 4.0, 1)})
    service = service_for(ks, pool, transport, shaper, short_horizon_s=0.5)
    async with EventLog(ks, pool) as events, Running(service):
        await enqueue(ks, envs)
        await eventually(
            lambda: len(events.finals()) == 42,
            within=90,
            what="42 final events",
            detail=events.summary,
        )
    assert len(events.of(EventType.TRANSIENT_FAILURE)) == 0
    assert sum(events.finals().values()) == 42
    # The rate of the slow destination held: 12 messages at 4/s with burst 1 span >= 2.75 s.
    slow = sorted(sent_at["slow.example"])
    assert slow[-1] - slow[0] >= 2.7
    gaps = [b - a for a, b in itertools.pairwise(slow)]
    # no burst: each send waits for its token (0.25 s; the way from the grant to the fake
    # transport's clock varies by a few tens of ms on a loaded machine)
    assert min(gaps) >= 0.2
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

    def draining() -> bool:
        consumer = service.worker.consumer
        return service.worker.stopping and consumer is not None and bool(consumer.paused())

    async def script(env: Envelope, rcpt: str) -> tuple[int, str, str]:
        if rcpt.startswith("slow"):
            started.set()
            # Still in flight when the drain starts (it pauses the consumer first), and only
            # then done: a drain that did not wait for it would cut it off.
            await eventually(draining, within=30, what="the drain")
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
        await events.expect(EventType.DELIVERY, 1)
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
        await events.expect(EventType.DELIVERY, 1)
    assert transport.calls == [(env.queue_id, "b@x.example")]


async def test_two_copies_of_one_message_reach_a_recipient_once(kafka: Any) -> None:
    # A late record of a message answered 451, then the client's copy sent again: two queue
    # ids, one message key; the second is skipped and both are committed.
    ks = kafka.settings(queue_partitions=1)
    pool = new_pool()
    await setup_pool(ks, pool)
    transport = FakeTransport()
    copies = [envelope(pool, n, ("a@x.example",), message_key="K" + pool) for n in (0, 1)]
    service = service_for(ks, pool, transport)
    async with Running(service):
        await enqueue(ks, copies)
        await committed_to_end(ks, pool)
    assert transport.calls == [(copies[0].queue_id, "a@x.example")]


async def test_dedup_warm_up_reads_back_delivery_events(kafka: Any) -> None:
    ks = kafka.settings()
    pool = new_pool()
    await setup_pool(ks, pool)
    producer = AIOKafkaProducer(bootstrap_servers=ks.bootstrap, acks="all")
    await producer.start()
    try:
        for n, kind in enumerate((EventType.DELIVERY, EventType.BOUNCE, EventType.DELIVERY)):
            event = Event(type=kind, queue_id=f"Q{n}", pool=pool, recipient=f"r{n}@x")
            await producer.send_and_wait(EVENTS_TOPIC, encode_event(event), key=b"Q")
        other = Event(type=EventType.DELIVERY, queue_id="Q9", pool="other", recipient="a@x")
        await producer.send_and_wait(EVENTS_TOPIC, encode_event(other))
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
        await asyncio.sleep(0.02)  # sends take a while, so the rebalance meets some in flight
        return 250, "2.0.0", "ok"

    first, second = FakeTransport(slowish), FakeTransport(slowish)
    envs = [envelope(pool, n, (f"r{n}@d{n % 8}.example",)) for n in range(200)]
    keys = {(e.queue_id, e.recipients[0]) for e in envs}
    # A small memory bound: the worker pauses its partitions instead of holding everything.
    one = service_for(ks, pool, first, max_inflight=8, dest_max_concurrency=1)
    two = service_for(ks, pool, second, max_inflight=8, dest_max_concurrency=1)
    async with EventLog(ks, pool) as events, Running(one):
        await enqueue(ks, envs)
        await eventually(
            lambda: len(events.finals()) >= 40,
            within=60,
            what="at least 40 final events",
            detail=events.summary,
        )
        async with Running(two):  # joins: a rebalance moves partitions while sends run
            await eventually(
                lambda: len(events.finals()) >= 120,
                within=60,
                what="at least 120 final events",
                detail=events.summary,
            )
        await events.expect_final(keys, within=90)
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
        # Yahoo's [TSS09]: the shipped reply rules mark it as one that will never succeed
        return (
            421,
            "4.7.0",
            "[TSS09] All messages from 192.0.2.10 will be permanently deferred; Retrying will "
            "NOT succeed. See https://postmaster.yahooinc.com/error-codes",
        )

    shaper = uniform(10, 1000.0, 100)
    transport = FakeTransport(deferred)
    service = service_for(ks, pool, transport, shaper)
    async with EventLog(ks, pool) as events, Running(service):
        await enqueue(ks, [envelope(pool, 0, ("x@y.example",))])
        # The bounce, then the DSN to the sender (bounced too by the same rule; no DSN of it).
        await events.expect(EventType.BOUNCE, 2)
    bounce = next(e for e in events.of(EventType.BOUNCE) if e.recipient == "x@y.example")
    assert (bounce.code, bounce.enhanced) == (521, "5.7.0")
    assert events.of(EventType.TRANSIENT_FAILURE) == []
    assert len(transport.calls) == 2  # the message and its DSN, each sent once


def test_a_worker_given_no_shaper_holds_every_destination_to_its_dest_settings() -> None:
    settings = DeliverySettings(
        pool=new_pool(), dest_max_concurrency=3, dest_max_rate=4.0, dest_burst=2
    )
    worker = Worker(settings, KafkaSettings(), FakeTransport())
    shaper = worker.shaper
    for key in ("gmail.com", "google", "example.org"):  # no provider rules apply
        lane = shaper.lanes.of(key, 0.0)[0]
        assert lane.steering.state == "fixed"  # held to the settings, nothing learned
        assert lane.steering.connections(0.0) == 3
        assert lane.rates == (Rate(4.0, 1.0, 2),)
    # a destination seen first starts with its burst: two now, the third a quarter second later
    assert [shaper.try_start("example.org", 0.0) for _ in range(3)] == ["", "", None]
    assert shaper.wait_time("example.org", 0.0) == 0.25
    for _ in range(2):
        shaper.finished("example.org", "", 0.0)
    # transactional mail goes first in each destination's queue
    assert worker.scheduler.urgent is transactional
    assert worker.scheduler.horizon == settings.short_horizon_s
