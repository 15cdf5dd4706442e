"""Warm-up overflow in the running worker (real broker): a pool capped at N messages a day sends
N and moves the rest to the overflow pool's queue topic, each exactly once, and commits past
all of them."""

from __future__ import annotations

import json
import time
from typing import Any

from prometheus_client import REGISTRY
from support.delivery_worker import (
    EventLog,
    FakeTransport,
    Running,
    committed_to_end,
    committed_total,
    enqueue,
    envelope,
    new_pool,
    service_for,
    setup_pool,
)
from support.shaping import warmup_overrides
from support.topic_reader import read_topic

from mailsluice.contracts.envelope import envelope_from_headers
from mailsluice.contracts.events import EventType
from mailsluice.contracts.topics import queue_topic
from mailsluice.delivery.shaping.runtime import ShapingRuntime
from mailsluice.delivery.shaping.settings import ShapingSettings

CAP = 5


def overrides(target: str) -> str:
    return warmup_overrides(target, CAP)


def overflowed(pool: str, target: str) -> float:
    labels = {"pool": pool, "target_pool": target}
    return REGISTRY.get_sample_value("mailsluice_warmup_overflow_messages_total", labels) or 0.0


async def test_over_the_warmup_cap_mail_moves_to_the_overflow_pool(kafka: Any) -> None:
    ks = kafka.settings(queue_partitions=3)
    pool, target = new_pool(), new_pool()
    await setup_pool(ks, pool)
    await setup_pool(ks, target)
    runtime = ShapingRuntime(ShapingSettings(pool_overrides=overrides(target)), ks, pool)
    assert runtime.shaper.warmup is not None
    shares: list[tuple[int, int]] = []

    def on_share(assigned: int, total: int) -> None:
        shares.append((assigned, total))
        runtime.set_share(assigned, total)

    transport = FakeTransport()
    service = service_for(ks, pool, transport, runtime.shaper, mover=False, on_share=on_share)
    envs = [envelope(pool, n, (f"r{n}@d{n % 4}.example",)) for n in range(17)]
    async with EventLog(ks, pool) as events, Running(service):
        await enqueue(ks, envs)
        await events.expect(EventType.DELIVERY, CAP)
        await committed_to_end(ks, pool, within=20)
        assert await committed_total(ks, pool) == len(envs)
    # A record is finished only once its overflow copy is acknowledged: with every offset
    # committed, the target's queue as it stands holds every copy there will be.
    moved = await read_topic(ks, queue_topic(target), lambda _r: True, expect=0)
    assert shares and shares[-1] == (3, 3)  # one worker owns every partition: the whole cap
    sent = {qid for qid, _ in transport.calls}
    assert len(transport.calls) == CAP
    moved_envs = [envelope_from_headers(r.headers) for r in moved]
    assert len(moved_envs) == len(envs) - CAP
    moved_ids = [e.queue_id for e in moved_envs]
    assert len(set(moved_ids)) == len(moved_ids)  # each moved once
    assert sent | set(moved_ids) == {e.queue_id for e in envs}  # nothing lost
    assert not sent & set(moved_ids)  # and nothing both sent and moved
    assert all(e.pool == target for e in moved_envs)  # retries and events belong to the target
    assert {r.value for r in moved} == {b"Subject: t\r\n\r\nhello\r\n"}
    assert all(r.key == e.routing_key.encode() for r, e in zip(moved, moved_envs, strict=True))
    assert overflowed(pool, target) == len(envs) - CAP
    assert runtime.shaper.warmup.trackers[""].status(time.time()).scopes["*"].used == CAP
    # every send that started was timed by the shaping delay histogram (raw domains: other)
    delays = {"pool": pool, "provider": "other"}
    assert REGISTRY.get_sample_value("mailsluice_shaping_delay_seconds_count", delays) == CAP


async def test_a_warm_address_takes_what_the_cold_one_may_not_send(kafka: Any) -> None:
    """Two source addresses, one warm: the cold one sends exactly its cap, the warm one the
    rest, and nothing overflows (the pool is held only when every address is over its cap)."""
    ks = kafka.settings(queue_partitions=3)
    pool, target = new_pool(), new_pool()
    await setup_pool(ks, pool)
    await setup_pool(ks, target)
    cold, warm = "127.0.0.21", "127.0.0.22"
    config = json.loads(overrides(target))
    config["warmup"]["sources"] = {warm: "warm"}
    settings = ShapingSettings(pool_overrides=json.dumps(config))
    runtime = ShapingRuntime(settings, ks, pool, sources=(cold, warm))
    transport = FakeTransport()
    service = service_for(ks, pool, transport, runtime.shaper, mover=False)
    envs = [envelope(pool, n, (f"r{n}@d{n % 4}.example",)) for n in range(17)]
    async with EventLog(ks, pool) as events, Running(service):
        await enqueue(ks, envs)
        await events.expect(EventType.DELIVERY, len(envs))
        await committed_to_end(ks, pool, within=20)
    assert (transport.sources.count(cold), transport.sources.count(warm)) == (CAP, len(envs) - CAP)
    assert overflowed(pool, target) == 0
    assert await read_topic(ks, queue_topic(target), lambda _r: True, expect=0) == []


async def test_a_warming_pool_spends_its_first_days_cap_on_the_engaged(kafka: Any) -> None:
    """20 bulk messages for one destination, 5 of them to engaged recipients (a high grade)
    spread through the backlog: the first day's cap of 5 reaches the sink with those 5; the
    others move to the warm pool, keeping their grade."""
    ks = kafka.settings(queue_partitions=3)
    pool, target = new_pool(), new_pool()
    await setup_pool(ks, pool)
    await setup_pool(ks, target)
    runtime = ShapingRuntime(ShapingSettings(pool_overrides=overrides(target)), ks, pool)
    transport = FakeTransport()
    service = service_for(ks, pool, transport, runtime.shaper, mover=False)
    engaged = {2, 7, 11, 16, 19}
    envs = [
        envelope(pool, n, (f"r{n}@d.example",), grade=5 if n in engaged else 1) for n in range(20)
    ]
    async with EventLog(ks, pool) as events, Running(service):
        await enqueue(ks, envs)
        await events.expect(EventType.DELIVERY, CAP)
        await committed_to_end(ks, pool, within=20)
    sent = {qid for qid, _ in transport.calls}
    assert sent == {envs[n].queue_id for n in engaged}
    moved = await read_topic(ks, queue_topic(target), lambda _r: True, expect=0)
    moved_envs = [envelope_from_headers(r.headers) for r in moved]
    assert len(moved_envs) == len(envs) - CAP
    assert {e.grade for e in moved_envs} == {1}
