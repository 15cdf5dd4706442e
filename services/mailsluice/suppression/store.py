"""An in-memory view of the compacted topic mailsluice.suppressions, followed live.

The store is a compacted view (kafka/compacted.py): ready once it has read the topic up to
the end offsets seen at start, then applying new records in a background task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from aiokafka import AIOKafkaProducer
from pydantic import ValidationError

from mailsluice.contracts.suppressions import (
    Suppression,
    decode_suppression,
    encode_suppression,
    suppression_key,
)
from mailsluice.contracts.topics import SUPPRESSIONS_TOPIC
from mailsluice.kafka.compacted import CompactedView
from mailsluice.kafka.settings import KafkaSettings

log = logging.getLogger(__name__)

Table = dict[str, Suppression]


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
        self._view: CompactedView | None = None
        self._dirty = False
        self._changed = asyncio.Event()

    # --- life cycle ---------------------------------------------------------------------

    async def start(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        """Load the whole topic; return once caught up with the end offsets seen now.

        Raises TimeoutError (after stopping) if that takes longer than `timeout` seconds.
        """
        if self._view is not None:
            raise RuntimeError("SuppressionStore already started")
        # A restart reloads from scratch: entries whose tombstones were compacted away while
        # we were stopped must not survive.
        self._table = {}
        self._view = CompactedView(
            self._settings,
            SUPPRESSIONS_TOPIC,
            self._apply,
            client_id=self._client_id,
            on_batch=self._after_batch,
        )
        try:
            await self._view.start(timeout)
        except BaseException:
            await self.stop()
            raise
        self._dirty = False
        self._view.follow_in_background()
        self._notify()
        log.info("suppression store ready: %d entries", len(self._table))

    async def stop(self) -> None:
        view, self._view = self._view, None
        if view is not None:
            await view.stop()

    async def __aenter__(self) -> SuppressionStore:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- following ----------------------------------------------------------------------

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        self._dirty |= apply_record(self._table, key, value)

    def _after_batch(self) -> None:
        if self._dirty:
            self._dirty = False
            self._notify()

    def _notify(self) -> None:
        # Wake every waiter, then arm a fresh event for the next change.
        self._changed.set()
        self._changed = asyncio.Event()

    # --- queries ------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True once the store has read the topic up to the end offsets seen at start."""
        return self._view is not None and self._view.ready

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
