"""The worker around rebalances (real broker): it tells its share of the queue topic's partitions
to the shaping runtime, whose pool-wide warm-up cap follows it; after a start or a takeover
it commits soon after the first records finish instead of a whole commit interval later; and a
stopping worker lets the shaping runtime publish what it learned while it still owns its
partitions, so the next owner reads it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from support.delivery_worker import (
    EventLog,
    FakeTransport,
    Running,
    committed,
    committed_total,
    enqueue,
    envelope,
    group_members,
    new_pool,
    service_for,
    setup_pool,
)
from support.eventually import eventually

from mailsluice.contracts.events import EventType
from mailsluice.delivery.shaping.runtime import ShapingRuntime
from mailsluice.delivery.shaping.settings import ShapingSettings
from mailsluice.kafka.settings import KafkaSettings


def warming_runtime(ks: KafkaSettings, pool: str, cap: int) -> ShapingRuntime:
    today = datetime.now(UTC).date().isoformat()
    overrides = {"warmup": {"schedule": "custom", "start": today, "table": {"1": cap}}}
    return ShapingRuntime(ShapingSettings(pool_overrides=json.dumps(overrides)), ks, pool)


def pool_cap(runtime: ShapingRuntime) -> int | None:
    assert runtime.shaper.warmup is not None
    return runtime.shaper.warmup.trackers[""].caps(None, time.time())["*"]


async def test_warmup_share_follows_the_assigned_partitions(kafka: Any) -> None:
    ks = kafka.settings(queue_partitions=4)
    pool = new_pool()
    await setup_pool(ks, pool)
    first_rt, second_rt = warming_runtime(ks, pool, 100), warming_runtime(ks, pool, 100)
    calls: dict[str, list[tuple[int, int]]] = {"first": [], "second": []}

    def recorder(name: str, runtime: ShapingRuntime) -> Callable[[int, int], None]:
        def on_share(assigned: int, total: int) -> None:
            calls[name].append((assigned, total))
            runtime.set_share(assigned, total)

        return on_share

    first = service_for(
        ks, pool, FakeTransport(), mover=False, on_share=recorder("first", first_rt)
    )
    second = service_for(
        ks, pool, FakeTransport(), mover=False, on_share=recorder("second", second_rt)
    )
    async with Running(first):
        assert calls["first"][-1] == (4, 4)
        assert pool_cap(first_rt) == 100
        async with Running(second):
            await eventually(
                lambda: calls["first"][-1] == (2, 4) and calls["second"][-1] == (2, 4),
                within=60,
                what="two shares of 2 partitions",
                detail=lambda: calls,
            )
            assert pool_cap(first_rt) == pool_cap(second_rt) == 50
            # the first worker gave everything up during the rebalance before its new share
            assert (0, 4) in calls["first"]
        await eventually(
            lambda: calls["first"][-1] == (4, 4),
            within=60,
            what="the first worker's share back to 4",
            detail=lambda: calls,
        )
        assert pool_cap(first_rt) == 100


async def test_first_records_after_start_and_takeover_commit_soon(kafka: Any) -> None:
    ks = kafka.settings(queue_partitions=4)
    pool = new_pool()
    await setup_pool(ks, pool)
    first = service_for(ks, pool, FakeTransport(), mover=False, commit_interval_s=60.0)
    envs = [envelope(pool, n, (f"r{n}@d{n % 8}.example",)) for n in range(8)]

    async def committed_at_least(count: int) -> bool:
        return await committed_total(ks, pool) >= count

    async with EventLog(ks, pool) as events, Running(first):
        await enqueue(ks, envs)
        await events.expect(EventType.DELIVERY, 8)
        # within 5 s: a whole interval would be 60 s
        await eventually(
            lambda: committed_at_least(8),
            within=5,
            interval=0.2,
            what="the first records committed",
            detail=lambda: committed(ks, pool),
        )
        # later records wait for the interval again: only the first finish commits early
        more = [envelope(pool, 100 + n, (f"s{n}@d{n % 8}.example",)) for n in range(8)]
        await enqueue(ks, more)
        await events.expect(EventType.DELIVERY, 16)
        # A window four times the first-commit delay: an early commit would show in it, and
        # an absence can only be watched over time.
        await asyncio.sleep(2.0)
        assert await committed_total(ks, pool) == 8
        second = service_for(ks, pool, FakeTransport(), mover=False, commit_interval_s=60.0)
        async with Running(second):
            assert second.worker.consumer is not None
            consumer = second.worker.consumer
            await eventually(
                lambda: len(consumer.assignment()) == 2, within=60, what="two partitions taken"
            )
            # the revocation committed the first worker's finished records
            assert await committed_total(ks, pool) == 16
            taken = {tp.partition for tp in second.worker.consumer.assignment()}
            last = [envelope(pool, 200 + n, (f"t{n}@d{n % 8}.example",)) for n in range(16)]
            await enqueue(ks, last)
            await events.expect(EventType.DELIVERY, 32)
            assert second.worker.consumer is not None
            ends = {
                tp.partition: second.worker.consumer.highwater(tp)
                for tp in second.worker.consumer.assignment()
            }
            taken = {p for p in taken if ends[p]}  # partitions that got records
            assert taken

            async def taken_committed() -> bool:
                now_committed = await committed(ks, pool)
                return all(now_committed.get(p) == ends[p] for p in taken)

            await eventually(
                taken_committed,
                within=5,
                interval=0.2,
                what=f"the taken partitions committed to {ends}",
                detail=lambda: committed(ks, pool),
            )


async def test_a_stopping_worker_publishes_before_it_leaves_its_group(kafka: Any) -> None:
    ks = kafka.settings(queue_partitions=2)
    pool = new_pool()
    await setup_pool(ks, pool)
    members_at_leave: list[int] = []

    async def on_leave() -> None:
        members_at_leave.append(await group_members(ks, pool))

    async with Running(service_for(ks, pool, FakeTransport(), mover=False, on_leave=on_leave)):
        assert await group_members(ks, pool) == 1
    # called once, while the worker was still a member; gone right after (it left, no timeout)
    assert members_at_leave == [1]
    assert await group_members(ks, pool) == 0
