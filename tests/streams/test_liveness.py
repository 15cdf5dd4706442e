"""The stream processors' liveness: an agent holding unprocessed events on its partitions that
processes none for longer than the stall bound fails /healthz; idle or processing, it stays
alive. Simulated clock; the agents' loop runs on fake streams (no Kafka)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

from faust.types import TP
from support.eventually import eventually

from mailsluice.contracts.topics import EVENTS_TOPIC
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.streams.app import StreamsProcessor
from mailsluice.streams.liveness import AgentProgress, Partition, combined, unprocessed
from mailsluice.streams.settings import StreamsSettings

P0, P1 = (EVENTS_TOPIC, 0), (EVENTS_TOPIC, 1)


class World:
    def __init__(self) -> None:
        self.now = 1000.0
        self.ends: dict[Partition, int | None] = {}

    def agent(self, stall_s: float = 60.0) -> AgentProgress:
        return AgentProgress(stall_s, lambda: self.ends, lambda: self.now)


def test_unprocessed_counts_from_the_last_event_to_each_partitions_end() -> None:
    assert unprocessed({P0: 10, P1: 7}, {P0: 4, P1: 7}) == 6
    # Not fetched yet, or no event seen since the assignment: nothing known, nothing counted.
    assert unprocessed({P0: None, P1: 9}, {P0: 3}) == 0
    # A partition no longer assigned does not count, whatever was done on it.
    assert unprocessed({P1: 9}, {P0: 3, P1: 9}) == 0


def test_an_agent_stuck_on_an_event_is_stalled_after_the_bound() -> None:
    w = World()
    a = w.agent(stall_s=60)
    w.ends = {P0: 100}
    assert a.progress.check() == (True, "no work held")  # no event seen: start unknown
    a.started(P0, 95)
    w.now += 59
    assert a.progress.check()[0]
    w.now += 2
    alive, detail = a.progress.check()
    assert not alive and detail.startswith("stalled: 5 held") and "61 s" in detail
    a.finished(P0, 95)  # it got through by itself before the restart came
    assert a.progress.check()[0]


def test_a_busy_agent_stays_alive_and_an_idle_one_however_long() -> None:
    w = World()
    a = w.agent(stall_s=60)
    for offset in range(20):
        w.ends = {P0: offset + 50}  # always a backlog
        a.started(P0, offset)
        w.now += 30
        a.finished(P0, offset)
        assert a.progress.check()[0]
    w.ends = {P0: 20}  # caught up
    w.now += 100_000
    assert a.progress.check() == (True, "no work held")


def test_revoked_partitions_are_forgotten() -> None:
    # Taken back later, a partition starts again from the committed offset: what this agent
    # did on it before would count events another member processed meanwhile.
    w = World()
    a = w.agent(stall_s=60)
    a.started(P0, 3)
    a.finished(P0, 3)
    a.forget([P0])
    w.ends = {P0: 500}
    w.now += 1000
    assert a.progress.check() == (True, "no work held")


def test_combined_names_the_stalled_agent() -> None:
    def ok() -> tuple[bool, str]:
        return True, "no work held"

    def stuck() -> tuple[bool, str]:
        return False, "stalled: 2 held, no progress for 700 s"

    assert combined({"route": ok, "judge": ok}) == (
        True,
        "route: no work held; judge: no work held",
    )
    assert combined({"route": ok, "judge": stuck}) == (
        False,
        "stalled: 2 held, no progress for 700 s (judge)",
    )


@dataclass
class Message:
    topic: str
    partition: int
    offset: int


@dataclass
class Event:
    value: bytes
    message: Message


class FakeStream:
    """A faust stream's `events()`, fed by the test."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Event] = asyncio.Queue()

    def put(self, offset: int) -> None:
        self.queue.put_nowait(Event(b"{}", Message(EVENTS_TOPIC, 0, offset)))

    async def events(self) -> AsyncIterator[Event]:
        while True:
            yield await self.queue.get()


async def test_the_agent_loop_reports_a_stuck_handler_and_its_recovery() -> None:
    now = [1000.0]
    settings = StreamsSettings(app_id="liveness-test", stall_s=60)
    processor = StreamsProcessor(settings, KafkaSettings(), 1, clock=lambda: now[0])
    ends: dict[str, Mapping[Partition, int | None]] = {EVENTS_TOPIC: {P0: 2}}
    processor.ends = lambda topic: ends.get(topic, {})  # type: ignore[method-assign]
    release, handled = asyncio.Event(), []

    async def handle(value: bytes, partition: int) -> None:
        if len(handled) == 1:
            await release.wait()  # the second event never finishes until released
        handled.append(partition)

    stream = FakeStream()
    loop = asyncio.create_task(processor.consume(stream, "route", handle, processor.routed))
    try:
        stream.put(0)
        stream.put(1)
        await eventually(lambda: processor.routed.done == {P0: 1}, within=5, what="event 0 done")
        now[0] += 59
        assert processor.live()[0]
        now[0] += 2
        alive, detail = processor.live()
        assert not alive and detail == "stalled: 1 held, no progress for 61 s (route)"
        release.set()
        await eventually(lambda: len(handled) == 2, within=5, what="event 1 handled")
        assert processor.live() == (
            True,
            "route: no work held; judge: no work held; tally: no work held; hygiene: no work held",
        )
        # A rebalance takes the partition back: faust's signal makes the agent forget it.
        await processor.app.on_partitions_revoked.send({TP(EVENTS_TOPIC, 0)})
        assert processor.routed.done == {}
    finally:
        loop.cancel()
