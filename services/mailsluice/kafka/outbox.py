"""Records a process decided to write but does not wait for (events after a reply was given):
kept in order in bounded memory and sent until Kafka acknowledges them, through a Kafka outage.

The owner puts records in and asks `has_room` before taking on work that will put more: a
full outbox means Kafka has been away for a while, and new work must wait (ingest answers
451) rather than grow memory or drop what was decided. Records leave only once acknowledged,
in the order they came (one send at a time), so events of one message stay in order. What is
left when the process stops and Kafka does not answer within the grace is counted and logged
as lost: the one case where a decided record is not written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable

from mailsluice.kafka.producers import RenewingProducer, Send
from mailsluice.kafka.retrying import until_kafka_answers

log = logging.getLogger(__name__)

BATCH = 500  # records per send
RETRY_FIRST_S = 0.2
RETRY_MAX_S = 5.0


class Outbox:
    def __init__(
        self,
        producers: RenewingProducer,
        *,
        limit: int,
        name: str,
        send_timeout_s: float = 10.0,
        on_lost: Callable[[int], None] = lambda _n: None,
        on_sent: Callable[[], None] = lambda: None,
    ) -> None:
        self._producers = producers
        self._limit = limit
        self._name = name
        self._on_lost, self._on_sent = on_lost, on_sent
        self._timeout = send_timeout_s
        self._queue: deque[Send] = deque()
        self._wake = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.failures = 0  # sends that failed and were tried again

    @property
    def pending(self) -> int:
        return len(self._queue)

    def has_room(self, count: int = 1) -> bool:
        return len(self._queue) + count <= self._limit

    def put(self, send: Send) -> bool:
        """Queue one record; False (and nothing queued) when the outbox is full."""
        if not self.has_room():
            return False
        self._queue.append(send)
        self._empty.clear()
        self._wake.set()
        return True

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"{self._name}-outbox")

    async def stop(self, grace_s: float) -> None:
        """Send what is left within `grace_s`, then stop; what is still unsent is lost."""
        if self._task is None:
            return
        if self._queue:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._empty.wait(), grace_s)
        # asyncio.wait_for may swallow a cancel (Python < 3.12), so the loop also checks _stop
        self._stop.set()
        self._wake.set()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None
        if self._queue:
            lost = len(self._queue)
            self._queue.clear()
            self._on_lost(lost)
            log.error(
                "%s: %d records not written: Kafka did not answer before the stop",
                self._name,
                lost,
            )

    async def _run(self) -> None:
        while not self._stop.is_set():
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self._queue[i] for i in range(min(BATCH, len(self._queue)))]
            if not await self._deliver(batch):
                return
            for _ in batch:
                self._queue.popleft()
            self._on_sent()
            if not self._queue:
                self._empty.set()

    async def _deliver(self, batch: list[Send]) -> bool:
        """Send `batch` until Kafka acknowledges it (True), or until stopped (False)."""
        return await until_kafka_answers(
            lambda: asyncio.wait_for(self._producers.send_all(batch), self._timeout),
            retry_s=RETRY_FIRST_S,
            max_retry_s=RETRY_MAX_S,
            stop=self._stop,
            on_failure=lambda exc: self._failed(len(batch), exc),
            errors=(Exception,),
        )

    def _failed(self, count: int, exc: Exception) -> None:
        # a timed-out send was cut short inside the producer: it must not be reused either
        self._producers.failed()
        self.failures += 1
        log.warning(
            "%s: writing %d records failed (%s); trying again",
            self._name,
            count,
            type(exc).__name__,
        )
