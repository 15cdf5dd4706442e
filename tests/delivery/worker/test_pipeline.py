"""Pipelined outcomes: a destination's slot takes its next message while the last one's outcome
records await Kafka's acknowledgement, at most `outcome_depth` messages per slot."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import TopicPartition
from support.attempts import attempts_for
from support.delivery_worker import FakeTransport, accept_all
from support.transport import envelope

from mailsluice.delivery.shaping.engine import PolicyShaper
from mailsluice.delivery.worker.attempts import Attempts, Item
from mailsluice.delivery.worker.pipeline import OutcomePipeline
from mailsluice.delivery.worker.settings import DeliverySettings
from mailsluice.policy.shaping import load_policy_text

KEY = "example.test"
# The scheduler's clock: the lane is made at 0, its burst has refilled by then.
NOW = 10.0


def policy(slots: int) -> str:
    return f"""
[defaults]
connection_limit = {slots}
max_message_rate = "1000000/s,burst=100000"
max_deliveries_per_connection = 1000
max_recipients_per_transaction = 100
tls = "opportunistic"
"""


class HeldAcks:
    """Outcome records are acknowledged only once `gate` is set."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.waiting = 0

    async def send_all(self, sends: list[Any]) -> None:
        self.waiting += 1
        try:
            await self.gate.wait()
        finally:
            self.waiting -= 1


def test_the_bound_is_depth_minus_one_per_slot_beside_the_sends_under_way() -> None:
    slots = {(KEY, "a"): 2, (KEY, "b"): 1}
    pipeline = OutcomePipeline(3, lambda key, source: slots[(key, source)])
    assert [pipeline.enter(KEY, "a") for _ in range(5)] == [True] * 4 + [False]
    assert [pipeline.enter(KEY, "b") for _ in range(3)] == [True, True, False]
    pipeline.leave(KEY, "a")
    assert pipeline.enter(KEY, "a")
    assert pipeline.waiting() == 6


def test_a_depth_of_one_holds_every_slot_until_the_acknowledgements() -> None:
    pipeline = OutcomePipeline(1, lambda _key, _source: 10)
    assert not pipeline.enter(KEY, "")
    assert pipeline.waiting() == 0


def message(n: int, pool: str) -> Any:
    env = envelope(f"r{n}@{KEY}", pool=pool)
    return env.model_copy(update={"queue_id": f"Q{n}", "message_key": f"K{n}"})


async def drive(attempts: Attempts, tasks: list[asyncio.Task[None]], until: Any) -> None:
    """Start what the scheduler allows, one turn of the loop at a time (the sends are instant
    fakes), until `until()` holds once nothing more may start."""
    for _ in range(10_000):
        jobs = attempts.scheduler.take(NOW)
        tasks += [asyncio.create_task(attempts.deliver(job)) for job in jobs]
        if not jobs and until():
            return
        await asyncio.sleep(0)
    raise AssertionError("the sends never settled")


@pytest.mark.parametrize(("depth", "slots"), [(1, 2), (3, 2), (4, 5)])
async def test_sends_waiting_for_acknowledgements_stop_at_depth_per_slot(
    depth: int, slots: int
) -> None:
    pool = f"pipe{depth}x{slots}"
    shaper = PolicyShaper(load_policy_text(policy(slots)), pool, adaptive=False)
    transport = FakeTransport(accept_all)
    finished: list[Item] = []
    settings = DeliverySettings(pool=pool, outcome_depth=depth)
    attempts = attempts_for(pool, transport, finished, shaper=shaper, settings=settings)
    acks = HeldAcks()
    attempts.producers = acks  # type: ignore[assignment]
    items = [Item(TopicPartition("q", 0), n, 1, message(n, pool), b"x\r\n") for n in range(50)]
    for item in items:
        attempts.scheduler.push(KEY, item, 0.0, 0.0)
    tasks: list[asyncio.Task[None]] = []
    # Until every send so far waits for its acknowledgement.
    await drive(attempts, tasks, lambda: acks.waiting == sum(not t.done() for t in tasks))
    # S sends hold their slots; (D - 1) x S more gave theirs back: D messages per slot.
    assert len(transport.calls) == depth * slots
    assert attempts.pipeline.waiting() == (depth - 1) * slots
    assert finished == []  # nothing is finished before its acknowledgement
    acks.gate.set()
    await drive(attempts, tasks, lambda: len(finished) == len(items))
    await asyncio.gather(*tasks)
    assert len(transport.calls) == 50
    assert sorted(i.offset for i in finished) == list(range(50))
    assert attempts.pipeline.waiting() == 0
