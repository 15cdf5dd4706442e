"""An in-memory view of the compacted topic mailsluice.suppressions, followed live.

The store is a compacted view (kafka/compacted.py): ready once it has read the topic up to
the end offsets seen at start, then applying new records in a background task. Entries are
scoped (contracts/suppressions.py): the table is keyed like the topic, `match` answers for the
scopes a message falls in, and `contains` asks the global scope only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from aiokafka import AIOKafkaProducer
from pydantic import ValidationError

from mailsluice.contracts.suppressions import (
    GLOBAL,
    Scope,
    Suppression,
    decode_suppression,
    encode_suppression,
    parse_key,
    suppression_key,
)
from mailsluice.contracts.topics import SUPPRESSIONS_TOPIC
from mailsluice.eventloop import wait_event
from mailsluice.kafka.compacted import CompactedView
from mailsluice.kafka.settings import KafkaSettings

log = logging.getLogger(__name__)

Table = dict[str, Suppression]


def normalize(address: str, scope: Scope = GLOBAL) -> str:
    """The table key of an address in a scope: the record key as text (address stripped and
    lower-cased, prefixed by the scope's label unless global)."""
    return suppression_key(address, scope).decode()


def apply_record(table: Table, key: bytes | str | None, value: bytes | None) -> bool:
    """Apply one record of the suppressions topic to `table`; return whether it changed.

    A value adds or replaces the entry; a null value (tombstone) removes it. The key names
    the scope (the value's `scope` field is only a copy). A value this reader cannot decode
    still suppresses the address in that scope: refusing mail wrongly is recoverable, sending
    to a suppressed address is not.
    """
    if key is None:
        log.warning("suppression record without a key ignored")
        return False
    text = key.decode(errors="replace") if isinstance(key, bytes) else key
    scope, address = parse_key(text)
    if not address:
        return False
    name = normalize(address, scope)
    if value is None:
        return table.pop(name, None) is not None
    try:
        entry = decode_suppression(value)
    except (ValidationError, ValueError):
        log.warning("undecodable suppression record for a key; treating it as suppressed")
        entry = Suppression(address=address, reason="unreadable", source="unknown", ts=0.0)
    if entry.scope != scope.label:
        entry = entry.model_copy(update={"scope": scope.label})
    if table.get(name) == entry:
        return False
    table[name] = entry
    return True


async def add_suppression(
    producer: AIOKafkaProducer,
    address: str,
    reason: str = "manual",
    source: str = "cli",
    scope: Scope = GLOBAL,
) -> Suppression:
    """Publish a suppression entry in `scope` and wait for the broker's acknowledgement."""
    entry = Suppression(address=address.strip(), reason=reason, source=source, scope=scope.label)
    await producer.send_and_wait(
        SUPPRESSIONS_TOPIC,
        key=suppression_key(address, scope),
        value=encode_suppression(entry),
    )
    return entry


async def remove_suppression(
    producer: AIOKafkaProducer, address: str, scope: Scope = GLOBAL
) -> None:
    """Publish a tombstone for the address in `scope`; wait for the broker's acknowledgement."""
    await producer.send_and_wait(
        SUPPRESSIONS_TOPIC, key=suppression_key(address, scope), value=None
    )


def _listing_order(entry: Suppression) -> tuple[str, bool, str]:
    return entry.address.strip().lower(), entry.scope != GLOBAL.label, entry.scope


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
        """Whether the address is suppressed globally."""
        return normalize(address) in self._table

    def get(self, address: str) -> Suppression | None:
        """The global entry of the address, if any."""
        return self._table.get(normalize(address))

    def match(self, address: str, scopes: Iterable[Scope]) -> Suppression | None:
        """The entry that suppresses the address in the first of `scopes` holding one (give
        them widest first, as scopes_for() does), or None."""
        for scope in scopes:
            entry = self._table.get(normalize(address, scope))
            if entry is not None:
                return entry
        return None

    def suppressed(self, address: str, scopes: Iterable[Scope]) -> bool:
        return self.match(address, scopes) is not None

    def entries(self, scope: Scope | None = None) -> list[Suppression]:
        """Every entry (of `scope` only, if given), sorted by address; an address's global entry
        first, then its scoped ones by label."""
        chosen = [e for e in self._table.values() if scope is None or e.scope == scope.label]
        return sorted(chosen, key=_listing_order)

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
            await wait_event(self._changed, remaining)
