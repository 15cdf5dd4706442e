"""The shaping engine in the running pipeline: real Kafka, the real delivery worker (through its
`shaper=` parameter), a fake transport that records when each send started.

- a destination limited to R messages/minute receives R +/- 5% per minute, with one worker and
  with two workers including a rebalance, while an unthrottled destination in the same
  partition runs at full speed;
- a 421 with a reputation text triggers the backoff and the rate recovers afterwards.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Literal

import pytest
from aiokafka import AIOKafkaProducer

from mailsluice.contracts.envelope import ENVELOPE_HEADER, Envelope, encode_envelope
from mailsluice.contracts.topics import queue_topic
from mailsluice.delivery.service import DeliveryService
from mailsluice.delivery.shaping.engine import PolicyShaper
from mailsluice.delivery.worker.settings import DeliverySettings
from mailsluice.kafka.admin import ensure_topics, standard_topics
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.policy.backoff import load_rules_text
from mailsluice.policy.shaping import load_policy_text

RATE_PER_MIN = 600  # 10 per second

POLICY = f"""
[defaults]
connection_limit = 20
max_message_rate = "6000/s"
max_deliveries_per_connection = 100
max_recipients_per_transaction = 100
tls = "opportunistic"

[domain."limited.example"]
max_message_rate = "{RATE_PER_MIN}/min,burst=5"

[domain."rep.example"]
max_message_rate = "{RATE_PER_MIN}/min,burst=1"
"""

RULES = """
[[rule]]
name = "reputation"
text = 'temporarily rate limited due to ip reputation'
action = "throttle"
rate = "60/min"
connection_limit = 1
duration = "4s"
recovery_steps = 2
recovery_step = "3s"
"""

REPUTATION = (
    "The mail server [192.0.2.1] has been temporarily rate limited due to IP reputation. "
    "For e-mail delivery information, see https://postmaster.live.com (S775)"
)


@dataclass(frozen=True)
class Result:
    recipient: str
    code: int
    enhanced: str = "2.0.0"
    text: str = "ok"
    remote: str = "fake[127.0.0.1]:25"

    @property
    def kind(self) -> Literal["delivered", "transient", "permanent"]:
        if self.code < 300:
            return "delivered"
        return "permanent" if self.code >= 500 else "transient"


class RecordingTransport:
    """Accepts everything after a short delay, except what `refuse` says; records start times
    per routing key."""

    def __init__(self, refuse=None) -> None:
        self.starts: dict[str, list[float]] = defaultdict(list)
        self.refuse = refuse

    async def send(self, env: Envelope, message: bytes) -> list[Result]:
        now = time.monotonic()
        self.starts[env.routing_key].append(now)
        await asyncio.sleep(0.002)
        if self.refuse is not None and self.refuse(env, now):
            return [Result(r, 451, "4.7.650", REPUTATION) for r in env.recipients]
        return [Result(r, 250) for r in env.recipients]

    async def close(self) -> None:
        pass


async def enqueue(
    ks: KafkaSettings, pool: str, key: str, count: int, *, batch: str = "a", stream: str = "bulk"
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=ks.bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = []
        for n in range(count):
            env = Envelope(
                queue_id=f"{pool}-{key}-{batch}{n:06d}",
                pool=pool,
                sender="s@origin.example",
                recipients=(f"r{n}@{key}",),
                routing_key=key,
                received_at=time.time(),
                stream=stream,
            )
            futures.append(
                await producer.send(
                    queue_topic(pool),
                    b"Subject: t\r\n\r\nhello\r\n",
                    key=key.encode(),
                    headers=[(ENVELOPE_HEADER, encode_envelope(env))],
                )
            )
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def service(
    ks: KafkaSettings, pool: str, transport: Any, shaper: PolicyShaper, **settings: Any
) -> DeliveryService:
    return DeliveryService(
        DeliverySettings(pool=pool, commit_interval_s=0.2, max_inflight=2000, **settings),
        ks,
        transport,
        shaper=shaper,
        consumer_options={"session_timeout_ms": 6000, "heartbeat_interval_ms": 500},
    )


async def start(svc: DeliveryService) -> asyncio.Task[None]:
    task = asyncio.create_task(svc.run())
    deadline = time.monotonic() + 60
    while not svc.ready()[0]:
        if task.done():
            task.result()
        assert time.monotonic() < deadline, svc.ready()
        await asyncio.sleep(0.05)
    return task


async def stop(svc: DeliveryService, task: asyncio.Task[None]) -> None:
    svc.stop()
    await asyncio.wait_for(task, 60)


def per_minute(starts: list[float], t0: float, t1: float) -> float:
    return len([t for t in starts if t0 <= t < t1]) / (t1 - t0) * 60


def worst_window(times: list[float], window: float) -> int:
    times = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


def shaper() -> PolicyShaper:
    return PolicyShaper(load_policy_text(POLICY), "p", rules=[])


async def test_rate_holds_with_one_worker_and_free_destination_runs_full_speed(kafka):
    ks = kafka.settings(queue_partitions=1)  # both destinations in the same partition
    pool = "t" + os.urandom(4).hex()
    await ensure_topics(ks, standard_topics(ks, [pool], 1024 * 1024))
    transport = RecordingTransport()
    svc = service(ks, pool, transport, shaper())
    task = await start(svc)
    try:
        t0 = time.monotonic()
        await enqueue(ks, pool, "limited.example", 1000)
        await enqueue(ks, pool, "free.example", 1500)
        await asyncio.sleep(65)
    finally:
        await stop(svc, task)
    limited = transport.starts["limited.example"]
    free = transport.starts["free.example"]
    begin = limited[0]
    achieved = per_minute(limited, begin + 5, begin + 65)
    assert achieved == pytest.approx(RATE_PER_MIN, rel=0.05)
    # the stated burst (5) plus what the rate allows within the window, never more
    assert worst_window(limited, 1.0) <= 5 + RATE_PER_MIN / 60
    # the free destination finished its 1500 within a few seconds, not at the limited rate
    assert len(free) >= 1500
    assert sorted(free)[1499] - t0 < 30


async def test_rate_holds_across_two_workers_and_a_rebalance(kafka):
    ks = kafka.settings(queue_partitions=4)
    pool = "t" + os.urandom(4).hex()
    await ensure_topics(ks, standard_topics(ks, [pool], 1024 * 1024))
    transport = RecordingTransport()  # shared: it records every send of both workers
    # A long horizon keeps the backlog in memory and on the partition, so what is measured
    # after the rebalance is the shaping, not when deferred mail comes back from delay topics.
    first = service(ks, pool, transport, shaper(), short_horizon_s=150)
    second = service(ks, pool, transport, shaper(), short_horizon_s=150)
    task1 = await start(first)
    task2 = await start(second)
    try:
        await asyncio.sleep(8)  # let the group settle with two members
        await enqueue(ks, pool, "limited.example", 1300)
        await asyncio.sleep(50)
        left = time.monotonic()
        await stop(first, task1)  # a rebalance: the survivor takes the destination over
        task1 = None
        await asyncio.sleep(40)
    finally:
        if task1 is not None:
            await stop(first, task1)
        await stop(second, task2)
    limited = sorted(transport.starts["limited.example"])
    begin = limited[0]
    # two workers, one owner of the destination: the limit holds
    assert per_minute(limited, begin + 5, begin + 45) == pytest.approx(RATE_PER_MIN, rel=0.05)
    # through the rebalance the limit still holds from above, with no burst at the handover
    for a in range(0, 40, 10):
        assert per_minute(limited, left + a, left + a + 10) <= RATE_PER_MIN * 1.05
    assert worst_window(limited, 1.0) <= 5 + RATE_PER_MIN / 60
    # and once the groups have settled the survivor sends at the limit again
    assert next(t for t in limited if t > left + 0.5) < left + 20
    assert per_minute(limited, left + 20, left + 40) == pytest.approx(RATE_PER_MIN, rel=0.05)


async def test_reputation_reply_throttles_and_rate_recovers(kafka):
    ks = kafka.settings(queue_partitions=1)
    pool = "t" + os.urandom(4).hex()
    await ensure_topics(ks, standard_topics(ks, [pool], 1024 * 1024))
    refused = {"at": None}
    refused_event = asyncio.Event()

    def refuse(env: Envelope, now: float) -> bool:
        # the third message gets the reputation deferral; everything else is accepted
        if refused["at"] is None and env.queue_id.endswith("000002"):
            refused["at"] = now
            refused_event.set()
            return True
        return False

    transport = RecordingTransport(refuse)
    engine = PolicyShaper(load_policy_text(POLICY), "p", rules=load_rules_text(RULES))
    # The refused message's own retry comes back quickly: with the default 300 s it would sit
    # at the head of retry.1m and the mover would hold the short throttle deferrals behind it
    # (reported to delivery-core: the mover waits on a partition's head record).
    svc = service(ks, pool, transport, engine, retry_base_s=1.0, retry_max_s=2.0)
    task = await start(svc)
    try:
        await enqueue(ks, pool, "rep.example", 100)
        await asyncio.wait_for(refused_event.wait(), 30)
        await asyncio.sleep(refused["at"] + 11 - time.monotonic())
        # the throttle (4 s hold, 2 recovery steps of 3 s) is over: fresh mail goes at full rate
        fresh = time.monotonic()
        await enqueue(ks, pool, "rep.example", 300, batch="b")
        await asyncio.sleep(22)
    finally:
        await stop(svc, task)
    at = refused["at"]
    assert at is not None
    starts = sorted(transport.starts["rep.example"])
    before = [t for t in starts if t < at]
    hold = [t for t in starts if at < t < at + 4]
    recovering = [t for t in starts if at + 4 <= t < at + 10]
    assert len(before) == 2
    assert len(hold) <= 5  # 1 per second during the 4 s hold (plus scheduler rounding)
    assert 4 < len(recovering) < 55  # between the throttled and the full rate
    assert per_minute(starts, fresh + 2, fresh + 20) == pytest.approx(RATE_PER_MIN, rel=0.05)


async def test_transactional_mail_overtakes_bulk_on_a_limited_destination(kafka):
    ks = kafka.settings(queue_partitions=1)
    pool = "t" + os.urandom(4).hex()
    await ensure_topics(ks, standard_topics(ks, [pool], 1024 * 1024))
    transport = RecordingTransport()
    sent: dict[str, float] = {}
    original = transport.send

    async def send(env: Envelope, message: bytes) -> list[Result]:
        sent[env.queue_id] = time.monotonic()
        return await original(env, message)

    transport.send = send  # type: ignore[method-assign]
    svc = service(ks, pool, transport, shaper())
    task = await start(svc)
    try:
        await enqueue(ks, pool, "limited.example", 150)  # 15 s of bulk at 10/s
        await asyncio.sleep(1.0)
        queued_at = time.monotonic()
        await enqueue(ks, pool, "limited.example", 5, batch="tx", stream="transactional")
        await asyncio.sleep(6)
    finally:
        await stop(svc, task)
    tx = [t for q, t in sent.items() if "-tx" in q]
    assert len(tx) == 5
    # the transactional messages went within about a second, ahead of the bulk backlog
    assert max(tx) - queued_at < 2.0
    bulk_after = [t for q, t in sent.items() if "-tx" not in q and t > queued_at]
    assert bulk_after  # bulk went on too, after them
