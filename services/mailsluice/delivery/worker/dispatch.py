"""The delivery worker's memory side: records between fetch and outcome.

Each record waits in the scheduler (a queue per destination under its shaping limits); the
dispatch loop starts whatever the scheduler allows, each send in a task of its own, and sends
records that waited past the short horizon to a delay topic. The worker's Kafka side
(consumer.py) pushes fetched records in and, on a revocation or at shutdown, takes queued ones
back and waits for the sends under way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Coroutine
from typing import Any

from aiokafka import TopicPartition

from mailsluice.delivery.shaping.scheduler import Scheduler, Shaper
from mailsluice.delivery.worker.attempts import Attempts, Item, transactional
from mailsluice.eventloop import wait_event

log = logging.getLogger(__name__)

# How often state of idle destinations is dropped (memory bound).
FORGET_INTERVAL_S = 60.0
# Longest the dispatch loop sleeps without a wake-up (a safety net for missed wake-ups).
MAX_SLEEP_S = 0.5
# A destination under a warm-up cap starts sending this long after its queue opens: a fetch
# batch is queued whole before any send anyway (the consumer pushes it without yielding), and
# this lets the next fetches of a partition's backlog (up to 500 records each, every few ms) be
# ranked by grade too before the cap is spent. Memory stays bounded: past the cap's room, the
# lowest grade leaves for the delay topic or the overflow pool.
WARMUP_GATHER_S = 1.0


def engagement(item: Item) -> int:
    """The cap of a warming pool goes to the most engaged recipients first."""
    return item.env.grade


def scheduler_for(shaper: Shaper, horizon: float) -> Scheduler[Item]:
    """The worker's scheduler: transactional mail first; while warming, by engagement."""
    return Scheduler(shaper, horizon, urgent=transactional, rank=engagement, gather=WARMUP_GATHER_S)


class Dispatch:
    def __init__(
        self,
        scheduler: Scheduler[Item],
        attempts: Attempts,
        wake: asyncio.Event,
        mono: Callable[[], float],
    ) -> None:
        """`wake` is set by whoever may have made a record startable (a push, a finished send:
        Attempts is given `wake.set`)."""
        self.scheduler = scheduler
        self.attempts = attempts
        self.wake = wake
        self.mono = mono
        self.tasks: dict[asyncio.Task[None], Item] = {}

    def push(self, item: Item, now: float, ready_at: float) -> None:
        """Queue a fetched record; one that would wait past the horizon is deferred at once.
        A record shaping held comes back at the slot it was given (its not_before)."""
        slotted = bool(item.env.held)
        deferral = self.scheduler.push(item.env.routing_key, item, now, ready_at, slotted=slotted)
        if deferral is not None:
            self.spawn(self.attempts.defer(deferral), item)

    async def run(self, stopping: asyncio.Event) -> None:
        """Start what the scheduler allows, defer what is overdue, sleep until the next change."""
        forget_at = self.mono() + FORGET_INTERVAL_S
        while not stopping.is_set():
            now = self.mono()
            if now >= forget_at:
                self.scheduler.forget_idle(now)
                forget_at = now + FORGET_INTERVAL_S
            for job in self.scheduler.take(now):
                self.attempts.started(job, now)
                self.spawn(self.attempts.deliver(job), job.item)
            for deferral in self.scheduler.overdue(now):
                self.spawn(self.attempts.defer(deferral), deferral.job.item)
            wait = min(self.scheduler.next_wake(self.mono()), MAX_SLEEP_S)
            self.wake.clear()
            if wait > 0:
                await wait_event(self.wake, wait)

    def spawn(self, coro: Coroutine[Any, Any, None], item: Item) -> None:
        task = asyncio.create_task(coro)
        self.tasks[task] = item
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery task failed", exc_info=task.exception())

    def take_back(self, partitions: Collection[TopicPartition] | None = None) -> int:
        """Drop the queued records of `partitions` (None: all); they were never started, so
        the next owner reads them again. Returns how many."""
        if partitions is None:
            return len(self.scheduler.remove(lambda _item: False))
        return len(self.scheduler.remove(lambda item: item.tp not in partitions))

    async def settle(self, partitions: Collection[TopicPartition], wait_s: float) -> None:
        """Give the sends under way for `partitions` up to `wait_s` seconds to finish."""
        busy = [t for t, item in self.tasks.items() if item.tp in partitions]
        if busy:
            await asyncio.wait(busy, timeout=wait_s)

    async def drain(self, wait_s: float) -> None:
        """Let every send under way finish within `wait_s` seconds; cancel the rest (their
        records are handed back uncommitted)."""
        tasks = list(self.tasks)
        if not tasks:
            return
        log.info("drain: waiting for %d in-flight messages", len(tasks))
        _, pending = await asyncio.wait(tasks, timeout=wait_s)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("drain: %d messages unfinished, handed back", len(pending))
            await asyncio.gather(*pending, return_exceptions=True)
