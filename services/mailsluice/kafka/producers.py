"""A producer that is replaced after a failure instead of being retried for ever.

An idempotent producer can end in a state it never leaves: batches that expired while the
broker was away leave it with sequence numbers the broker refuses (OutOfOrderSequenceNumber),
and every later send fails the same way. So after a failed send the holder starts a fresh
producer for the next one (which also bootstraps again once the broker is back) and closes
the old one in the background, without sending what it still buffers: whoever sent those
records was told they failed (ingest answered 451; the worker sends them again), so they must
not be written later. What was already on the wire may still land; docs/architecture.md says
how delivery treats that.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.errors import ProducerClosed

log = logging.getLogger(__name__)

# A producer being closed in the background gets this long to flush (or to give up).
CLOSE_TIMEOUT_S = 30.0

# topic, value (None: a tombstone), key, headers
Send = tuple[str, bytes | None, bytes | None, Sequence[tuple[str, bytes]]]


def _retrieve(future: asyncio.Future[object]) -> None:
    if not future.cancelled():
        future.exception()


async def abandon(producer: AIOKafkaProducer) -> None:
    """Close `producer` without sending the batches it still buffers (they fail instead)."""
    # aiokafka has no public "close without flush": stop its sender first, so nothing more
    # goes out, then fail what the accumulator holds, so stop() has nothing to flush.
    sender = getattr(producer, "_sender", None)
    if sender is not None:
        await sender.close()
    accumulator = getattr(producer, "_message_accumulator", None)
    if accumulator is not None:
        # A batch sent once and queued again still carries the callback that removes it from
        # the pending set when it completes, but is no longer in that set: put it back, or
        # failing it raises KeyError inside aiokafka's callback.
        for batches in accumulator._batches.values():
            accumulator._pending_batches.update(b for b in batches if b.retry_count > 0)
        accumulator.fail_all(ProducerClosed())
    await producer.stop()


class RenewingProducer:
    """Hands out a started producer; `failed()` makes the next `get()` start a fresh one."""

    def __init__(self, factory: Callable[[], AIOKafkaProducer], *, name: str) -> None:
        self._factory = factory
        self._name = name
        self._producer: AIOKafkaProducer | None = None
        self._broken = False
        self._lock = asyncio.Lock()
        self._closing: set[asyncio.Task[None]] = set()
        self.renewals = 0  # producers replaced after a failure

    async def get(self) -> AIOKafkaProducer:
        async with self._lock:
            if self._producer is not None and not self._broken:
                return self._producer
            old, self._producer = self._producer, None
            if old is not None:
                self._close_later(old)
            fresh = self._factory()
            try:
                await fresh.start()
            except BaseException:
                self._close_later(fresh)
                raise
            if old is not None:
                self.renewals += 1
                log.info("%s: Kafka producer replaced after a failure", self._name)
            self._producer, self._broken = fresh, False
            return fresh

    def failed(self) -> None:
        """A send failed: the next get() replaces the producer, dropping what it buffers."""
        self._broken = True

    async def send_all(self, sends: Sequence[Send]) -> None:
        """Send every record and wait for all acknowledgements; on any failure the producer
        is marked failed and the error raised."""
        try:
            producer = await self.get()
            acks = [
                await producer.send(topic, value, key=key, headers=list(headers) or None)
                for topic, value, key, headers in sends
            ]
            for ack in acks:
                # a caller that gave up (timeout) never reads these: read them here
                ack.add_done_callback(_retrieve)
            await asyncio.gather(*acks)
        except Exception:
            self.failed()
            raise

    async def stop(self, grace_s: float = 10.0) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            if self._broken:
                try:
                    await asyncio.wait_for(abandon(producer), grace_s)
                except Exception:
                    log.warning("%s: closing the failed Kafka producer failed", self._name)
            else:
                try:
                    await asyncio.wait_for(producer.flush(), grace_s)
                except Exception:
                    log.warning("%s: flushing the Kafka producer failed", self._name)
                await producer.stop()
        if self._closing:
            await asyncio.wait(set(self._closing), timeout=grace_s)

    def _close_later(self, producer: AIOKafkaProducer) -> None:
        async def close() -> None:
            try:
                await asyncio.wait_for(abandon(producer), CLOSE_TIMEOUT_S)
            except Exception:
                log.warning("%s: closing a failed Kafka producer failed", self._name, exc_info=True)

        task = asyncio.create_task(close(), name=f"{self._name}-close-producer")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)


class KafkaWatch:
    """Whether Kafka took the last write, for a service's readiness. While it did not, Kafka is
    asked every `interval_s` for `topic`'s partitions (the producer replaced after each failed
    ask): a pod out of traffic gets no request whose write would show Kafka answering again."""

    def __init__(self, producers: RenewingProducer, topic: str, *, interval_s: float = 2.0) -> None:
        self._producers = producers
        self._topic = topic
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self.error = "starting"  # "" while Kafka takes writes

    def wrote(self) -> None:
        self.error = ""

    def failed(self, exc: BaseException) -> None:
        self.error = type(exc).__name__ or "unavailable"

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name=f"watch kafka for {self._topic}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task})

    async def _watch(self) -> None:
        while True:
            if self.error:
                try:
                    producer = await self._producers.get()
                    await asyncio.wait_for(producer.partitions_for(self._topic), self._interval_s)
                    self.error = ""
                except Exception as exc:
                    self._producers.failed()
                    self.error = type(exc).__name__ or "unreachable"
            await asyncio.sleep(self._interval_s)
