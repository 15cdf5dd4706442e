"""The shaping engine in the running pipeline, in wall time: real Kafka, the real delivery worker
(through its `shaper=` parameter), a fake transport that records when each send started.

A destination limited to R messages/minute receives R +/- 5% per minute, with one worker while
an unthrottled destination in the same partition runs at full speed, and with two workers
through a rebalance. test_rates.py proves these rates (and the backoff and transactional
ordering) on a simulated clock; these runs check the same with Kafka, delay topics and a real
rebalance in between, so they are few, short and marked `integration`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import defaultdict

import pytest
from support.delivery_worker import Result, Running, enqueue, envelope, service_for
from support.eventually import eventually
from support.shaping import BURST, RATE_PER_MIN, limited_shaper, per_minute, worst_window

from mailsluice.contracts.envelope import Envelope
from mailsluice.kafka.admin import ensure_topics, standard_topics
from mailsluice.kafka.settings import KafkaSettings

pytestmark = pytest.mark.integration


class RecordingTransport:
    """Accepts everything after a short delay; records start times per routing key, in `starts`
    (which several transports may share) and in `mine` (its own sends only)."""

    def __init__(self, starts: dict[str, list[float]] | None = None) -> None:
        self.starts: dict[str, list[float]] = defaultdict(list) if starts is None else starts
        self.mine: dict[str, list[float]] = defaultdict(list)
        self.seen: dict[str, asyncio.Event] = defaultdict(asyncio.Event)  # set at the first send

    async def send(self, env: Envelope, message: bytes, *, source: str = "") -> list[Result]:
        now = time.monotonic()
        self.starts[env.routing_key].append(now)
        self.mine[env.routing_key].append(now)
        self.seen[env.routing_key].set()
        await asyncio.sleep(0.002)  # a send takes a little while, as a real one does
        return [Result(r, 250, "2.0.0", "ok") for r in env.recipients]

    async def close(self) -> None:
        pass


async def sent_past(starts: list[float], offset: float, what: str) -> float:
    """Wait until a send `offset` seconds or more after the first of `starts` is recorded (sends
    are appended in time order, so the window up to it is complete); return that first send."""
    await eventually(
        lambda: bool(starts) and starts[-1] >= starts[0] + offset,
        within=offset + 30,
        interval=0.2,
        what=what,
    )
    return starts[0]


async def enqueue_for(ks: KafkaSettings, pool: str, key: str, count: int) -> None:
    """`count` bulk messages to one destination, one recipient each."""
    envs: list[Envelope | None] = [
        envelope(pool, n, (f"r{n}@{key}",), queue_id=f"{pool}-{key}-a{n:06d}", stream="bulk")
        for n in range(count)
    ]
    await enqueue(ks, envs)


async def test_rate_holds_with_one_worker_and_free_destination_runs_full_speed(kafka):
    ks = kafka.settings(queue_partitions=1)  # both destinations in the same partition
    pool = "t" + os.urandom(4).hex()
    await ensure_topics(ks, standard_topics(ks, [pool], 1024 * 1024))
    transport = RecordingTransport()
    async with Running(service_for(ks, pool, transport, limited_shaper(), max_inflight=2000)):
        t0 = time.monotonic()
        await enqueue_for(ks, pool, "limited.example", 450)
        await enqueue_for(ks, pool, "free.example", 1500)
        # the measured run itself, in wall time: 35 s of the limited destination's sends
        begin = await sent_past(transport.starts["limited.example"], 35, "35 s of limited sends")
    limited = transport.starts["limited.example"]
    free = transport.starts["free.example"]
    achieved = per_minute(limited, begin + 5, begin + 35)
    assert achieved == pytest.approx(RATE_PER_MIN, rel=0.05)
    # the stated burst plus what the rate allows within the window, never more
    assert worst_window(limited, 1.0) <= BURST + RATE_PER_MIN / 60
    # the free destination finished its 1500 within a few seconds, not at the limited rate
    assert len(free) >= 1500
    assert sorted(free)[1499] - t0 < 30


async def test_rate_holds_across_two_workers_and_a_rebalance(kafka):
    ks = kafka.settings(queue_partitions=4)
    pool = "t" + os.urandom(4).hex()
    await ensure_topics(ks, standard_topics(ks, [pool], 1024 * 1024))
    starts: dict[str, list[float]] = defaultdict(list)  # every send of both workers
    transports = RecordingTransport(starts), RecordingTransport(starts)
    # A long horizon keeps the backlog in memory and on the partition, so what is measured
    # after the rebalance is the shaping, not when deferred mail comes back from delay topics.
    workers = [
        Running(service_for(ks, pool, t, limited_shaper(), max_inflight=2000, short_horizon_s=150))
        for t in transports
    ]
    running = [await w.start() for w in workers]
    key = "limited.example"
    try:

        def settled() -> bool:
            shares = [
                len(s.worker.consumer.assignment()) if s.worker.consumer else 0 for s in running
            ]
            return shares == [2, 2]

        # the group settled with two members, each owning two of the four partitions
        await eventually(settled, within=60, interval=0.2, what="two members with 2 partitions")
        await enqueue_for(ks, pool, key, 800)
        await sent_past(starts[key], 25, "the measured run before the rebalance")
        # a rebalance: the owner of the destination stops, the survivor takes it over
        owner = next(i for i, t in enumerate(transports) if t.mine[key])
        survivor = transports[1 - owner]
        left = time.monotonic()
        await workers.pop(owner).stop()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(survivor.seen[key].wait(), left + 20 - time.monotonic())
        await sent_past(survivor.mine[key], 25, "the measured run after it")
    finally:
        for worker in workers:
            await worker.stop()
    end = time.monotonic()
    limited = sorted(starts[key])
    begin = limited[0]
    # two workers, one owner of the destination: the limit holds
    assert per_minute(limited, begin + 5, begin + 25) == pytest.approx(RATE_PER_MIN, rel=0.05)
    # once the group has settled the survivor sends at the limit
    resumed = survivor.mine[key][0]
    assert resumed < left + 20
    assert per_minute(limited, resumed + 5, resumed + 25) == pytest.approx(RATE_PER_MIN, rel=0.05)
    # through the rebalance the limit holds from above, with no burst at the handover
    for a in range(0, int(end - left) - 9, 10):
        assert per_minute(limited, left + a, left + a + 10) <= RATE_PER_MIN * 1.05
    assert worst_window(limited, 1.0) <= BURST + RATE_PER_MIN / 60
