"""What a retry mover holds, per destination, written to the control topic for `mailsluice
destinations list` (contracts/control.py, `retries/<mover id>`).

The mover is the one place that sees every record on the delay topics, so it counts them: per
(pool, routing key), the records a shaping hold deferred (suspended, warm-up, throttled,
blocked) and the failure retries. It writes them every `interval_s`, at once after a command
(a resume or retry-now releases records), and a tombstone when it stops; a reader ignores a
record much older than its interval (a mover that died without its tombstone). Records behind
a partition paused at the memory bound are not fetched, so not counted: the record says so.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
from collections.abc import Callable

from mailsluice.contracts.control import RetryCount, RetryStatus, encode_retries, retries_key
from mailsluice.contracts.topics import CONTROL_TOPIC
from mailsluice.delivery.retry.hold import RetryHold
from mailsluice.eventloop import wait_event
from mailsluice.kafka.admin import control_topics, ensure_topics
from mailsluice.kafka.producers import RenewingProducer
from mailsluice.kafka.settings import KafkaSettings

log = logging.getLogger(__name__)

_instances = itertools.count(1)


def mover_id() -> str:
    """Unique per mover object (several run in one process in tests)."""
    return f"{socket.gethostname()}-{os.getpid()}-{next(_instances)}"


def retry_status(hold: RetryHold, mover: str, now: float, interval_s: float) -> RetryStatus:
    counts = tuple(
        RetryCount(pool, key, held, retrying)
        for (pool, key), (held, retrying) in sorted(hold.by_destination().items())
    )
    return RetryStatus(mover, now, interval_s, counts, partial=bool(hold.paused()))


class CountsReporter:
    """Writes the hold's counts until cancelled; `soon()` asks for a write now."""

    def __init__(
        self,
        kafka: KafkaSettings,
        hold: RetryHold,
        producer: Callable[[], RenewingProducer | None],
        wall: Callable[[], float],
        interval_s: float,
    ) -> None:
        self.kafka = kafka
        self.hold = hold
        self.producer = producer
        self.wall = wall
        self.interval_s = interval_s
        self.mover = mover_id()
        self._now = asyncio.Event()
        self._topics = False  # the control topic is known to exist
        self.written = False

    def soon(self) -> None:
        self._now.set()

    async def run(self) -> None:
        while True:
            try:
                await self.write()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the next round writes the latest counts again
                log.warning("retry mover could not write its counts: %s", exc)
            await wait_event(self._now, self.interval_s)
            self._now.clear()

    async def write(self) -> None:
        producer = self.producer()
        if producer is None:
            return
        if not self._topics:
            await ensure_topics(self.kafka, control_topics(self.kafka))
            self._topics = True
        status = retry_status(self.hold, self.mover, self.wall(), self.interval_s)
        record = (CONTROL_TOPIC, encode_retries(status), retries_key(self.mover), ())
        await producer.send_all([record])
        self.written = True

    async def withdraw(self) -> None:
        """The tombstone of this mover's record (it stops: its records go to the next owner)."""
        producer = self.producer()
        if producer is not None and self.written:
            await producer.send_all([(CONTROL_TOPIC, None, retries_key(self.mover), ())])
