"""The worker around rebalances (real broker): it tells its share of the queue topic's partitions
to the shaping runtime, whose pool-wide warm-up cap follows it; and after a start or a takeover
it commits soon after the first records finish instead of a whole commit interval later."""

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
    enqueue,
    envelope,
    new_pool,
    setup_pool,
)

from mailsluice.contracts.events import EventType
from mailsluice.delivery.service import DeliveryService
from mailsluice.delivery.shaping.runtime import ShapingRuntime, ShapingSettings
from mailsluice.delivery.worker.settings import DeliverySettings
from mailsluice.kafka.settings import KafkaSettings

CONSUMER = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 500}


def warming_runtime(ks: KafkaSettings, pool: str, cap: int) -> ShapingRuntime:
    today = datetime.now(UTC).date().isoformat()
    overrides = {"warmup": {"schedule": "custom", "start": today, "table": {"1": cap}}}
    return ShapingRuntime(ShapingSettings(pool_overrides=json.dumps(overrides)), ks, pool)


def service(
    ks: KafkaSettings, pool: str, on_share: Callable[[int, int], None] | None = None, **kw: Any
) -> DeliveryService:
    return DeliveryService(
        DeliverySettings(pool=pool, **kw),
        ks,
        FakeTransport(),
        mover=False,
        on_share=on_share,
        consumer_options=CONSUMER,
    )


async def until(cond: Callable[[], bool], within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while not cond():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)


def pool_cap(runtime: ShapingRuntime) -> int | None:
    assert runtime.shaper.warmup is not None
    return runtime.shaper.warmup.caps(None, time.time())["*"]


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

    first = service(ks, pool, recorder("first", first_rt))
    second = service(ks, pool, recorder("second", second_rt))
    async with Running(first):
        assert calls["first"][-1] == (4, 4)
        assert pool_cap(first_rt) == 100
        async with Running(second):
            await until(lambda: calls["first"][-1] == (2, 4) and calls["second"][-1] == (2, 4))
            assert pool_cap(first_rt) == pool_cap(second_rt) == 50
            # the first worker gave everything up during the rebalance before its new share
            assert (0, 4) in calls["first"]
        await until(lambda: calls["first"][-1] == (4, 4))
        assert pool_cap(first_rt) == 100


async def test_first_records_after_start_and_takeover_commit_soon(kafka: Any) -> None:
    ks = kafka.settings(queue_partitions=4)
    pool = new_pool()
    await setup_pool(ks, pool)
    first = service(ks, pool, commit_interval_s=60.0)
    envs = [envelope(pool, n, (f"r{n}@d{n % 8}.example",)) for n in range(8)]
    async with EventLog(ks, pool) as events, Running(first):
        await enqueue(ks, envs)
        await events.wait_for(lambda: len(events.of(EventType.DELIVERY)) == 8)
        started = time.monotonic()
        while sum((await committed(ks, pool)).values()) < 8:
            # a whole interval would be 60 s
            assert time.monotonic() - started < 5, await committed(ks, pool)
            await asyncio.sleep(0.2)
        # later records wait for the interval again: only the first finish commits early
        more = [envelope(pool, 100 + n, (f"s{n}@d{n % 8}.example",)) for n in range(8)]
        await enqueue(ks, more)
        await events.wait_for(lambda: len(events.of(EventType.DELIVERY)) == 16)
        await asyncio.sleep(2.0)
        assert sum((await committed(ks, pool)).values()) == 8
        second = service(ks, pool, commit_interval_s=60.0)
        async with Running(second):
            assert second.worker.consumer is not None
            await until(lambda: len(second.worker.consumer.assignment()) == 2)
            # the revocation committed the first worker's finished records
            assert sum((await committed(ks, pool)).values()) == 16
            taken = {tp.partition for tp in second.worker.consumer.assignment()}
            last = [envelope(pool, 200 + n, (f"t{n}@d{n % 8}.example",)) for n in range(16)]
            await enqueue(ks, last)
            await events.wait_for(lambda: len(events.of(EventType.DELIVERY)) == 32)
            assert second.worker.consumer is not None
            ends = {
                tp.partition: second.worker.consumer.highwater(tp)
                for tp in second.worker.consumer.assignment()
            }
            taken = {p for p in taken if ends[p]}  # partitions that got records
            assert taken
            started = time.monotonic()
            while True:
                now_committed = await committed(ks, pool)
                if all(now_committed.get(p) == ends[p] for p in taken):
                    break
                assert time.monotonic() - started < 5, (now_committed, ends)
                await asyncio.sleep(0.2)
