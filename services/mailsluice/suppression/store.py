"""An in-memory view of the compacted topic mailsluice.suppressions, followed live.

The store reads every partition from the beginning without a consumer group (each reader
needs the whole table, and nothing is committed), becomes ready once it has reached the end
offsets seen at start, and then keeps applying new records in a background task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from mailsluice.contracts.suppressions import (
    Suppression,
    decode_suppression,
    encode_suppression,
    suppression_key,
)
from mailsluice.contracts.topics import SUPPRESSIONS_TOPIC
from mailsluice.kafka.admin import topic_partitions
from mailsluice.kafka.clients import make_consumer
from mailsluice.kafka.settings import KafkaSettings

log = logging.getLogger(__name__)

Table = dict[str, Suppression]
# Kafka error code for a topic that does not exist (yet).
_UNKNOWN_TOPIC = 3


def normalize(address: str) -> str:
    """The table key of an address: the record key as text (stripped, lower-cased)."""
    return suppression_key(address).decode()


def apply_record(table: Table, key: bytes | str | None, value: bytes | None) -> bool:
    """Apply one record of the suppressions topic to `table`; return whether it changed.

    A value adds or replaces the entry; a null value (tombstone) removes it. A value this
    reader cannot decode still suppresses the address: refusing mail wrongly is recoverable,
    sending to a suppressed address is not.
    """
    if key is None:
        log.warning("suppression record without a key ignored")
        return False
    text = key.decode(errors="replace") if isinstance(key, bytes) else key
    address = normalize(text)
    if not address:
        return False
    if value is None:
        return table.pop(address, None) is not None
    try:
        entry = decode_suppression(value)
    except (ValidationError, ValueError):
        log.warning("undecodable suppression record for a key; treating it as suppressed")
        entry = Suppression(address=address, reason="unreadable", source="unknown", ts=0.0)
    if table.get(address) == entry:
        return False
    table[address] = entry
    return True


async def add_suppression(
    producer: AIOKafkaProducer, address: str, reason: str = "manual", source: str = "cli"
) -> Suppression:
    """Publish a suppression entry and wait for the broker's acknowledgement."""
    entry = Suppression(address=address.strip(), reason=reason, source=source)
    await producer.send_and_wait(
        SUPPRESSIONS_TOPIC,
        key=suppression_key(address),
        value=encode_suppression(entry),
    )
    return entry


async def remove_suppression(producer: AIOKafkaProducer, address: str) -> None:
    """Publish a tombstone for the address and wait for the broker's acknowledgement."""
    await producer.send_and_wait(SUPPRESSIONS_TOPIC, key=suppression_key(address), value=None)


class SuppressionStore:
    """The suppression table, loaded from the start of the topic and followed live."""

    def __init__(
        self, settings: KafkaSettings, *, client_id: str = "mailsluice-suppressions"
    ) -> None:
        self._settings = settings
        self._client_id = client_id
        self._table: Table = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._end: dict[TopicPartition, int] = {}
        self._ready = False
        self._ready_event = asyncio.Event()
        self._changed = asyncio.Event()

    # --- life cycle ---------------------------------------------------------------------

    async def start(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        """Load the whole topic; return once caught up with the end offsets seen now.

        Raises TimeoutError (after stopping) if that takes longer than `timeout` seconds.
        """
        if self._consumer is not None:
            raise RuntimeError("SuppressionStore already started")
        # A restart reloads from scratch: entries whose tombstones were compacted away while
        # we were stopped must not survive.
        self._table = {}
        self._ready_event = asyncio.Event()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        topic = SUPPRESSIONS_TOPIC
        tps = await topic_partitions(self._settings, topic, timeout)
        consumer = make_consumer(self._settings, group_id=None, client_id=self._client_id)
        self._consumer = consumer
        try:
            await consumer.start()
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            self._end = dict(await consumer.end_offsets(tps))
            self._task = asyncio.create_task(self._follow(), name="suppression-store")
            await self._wait_ready(max(0.0, deadline - loop.time()))
        except BaseException:
            await self.stop()
            raise
        log.info("suppression store ready: %d entries", len(self._table))

    async def _wait_ready(self, wait_s: float) -> None:
        assert self._task is not None
        ready = asyncio.create_task(self._ready_event.wait())
        try:
            done, _ = await asyncio.wait(
                {ready, self._task}, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            ready.cancel()
        if self._task in done:
            self._task.result()  # re-raises what stopped the follower
            raise RuntimeError("suppression follower stopped before it was ready")
        if not done:
            raise TimeoutError(f"suppression store not caught up within {wait_s:.1f}s")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()
        self._ready = False

    async def __aenter__(self) -> SuppressionStore:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- following ----------------------------------------------------------------------

    async def _follow(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while True:
            try:
                batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            except KafkaError as exc:
                # The client reconnects by itself; a lost broker must not end the follower,
                # or the table would silently go stale.
                log.warning("suppression follower: %s; retrying", exc)
                await asyncio.sleep(1.0)
                continue
            changed = self._apply_batches(batches.values())
            if not self._ready and await self._caught_up(consumer):
                self._ready = True
                self._ready_event.set()
                changed = True
            if changed:
                self._notify()

    def _apply_batches(self, batches: Iterable[list[Any]]) -> bool:
        changed = False
        for records in batches:
            for record in records:
                changed |= apply_record(self._table, record.key, record.value)
        return changed

    async def _caught_up(self, consumer: AIOKafkaConsumer) -> bool:
        for tp, end in self._end.items():
            if await consumer.position(tp) < end:
                return False
        return True

    def _notify(self) -> None:
        # Wake every waiter, then arm a fresh event for the next change.
        self._changed.set()
        self._changed = asyncio.Event()

    # --- queries ------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True once the store has read the topic up to the end offsets seen at start."""
        return self._ready

    def contains(self, address: str) -> bool:
        return normalize(address) in self._table

    def get(self, address: str) -> Suppression | None:
        return self._table.get(normalize(address))

    def entries(self) -> list[Suppression]:
        """Every entry, sorted by (normalised) address."""
        return [self._table[key] for key in sorted(self._table)]

    def __len__(self) -> int:
        return len(self._table)

    def __contains__(self, address: object) -> bool:
        return isinstance(address, str) and self.contains(address)

    # A deadline for the whole wait, not for one call, hence the timeout parameter.
    async def wait_for(
        self,
        condition: str | Callable[[], bool],
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> None:
        """Wait until `condition` holds: an address (present in the table) or a predicate.

        Checked after every applied batch; raises TimeoutError if it does not hold in time.
        """
        if isinstance(condition, str):
            address = condition
            predicate: Callable[[], bool] = lambda: self.contains(address)  # noqa: E731
        else:
            predicate = condition
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"condition not met within {timeout:.1f}s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
