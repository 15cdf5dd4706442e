"""An in-memory view of the compacted topic mailsluice.engagement, followed live: the grade of a
message's recipients for ingest and the API, the records of a tenant for the dry-run report.

Like the suppression store (suppression/store.py) it is a compacted view (kafka/compacted.py):
ready once read up to the end offsets seen at start, then applying new records in the
background. A record this reader cannot decode (a newer schema) is left out: the address then
grades as new, which only changes the order a warming pool sends in.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable, Iterable

from pydantic import ValidationError

from mailsluice.contracts.engagement import (
    NOT_GRADED,
    Engagement,
    decode_engagement,
    engagement_key,
    grade,
    parse_engagement_key,
)
from mailsluice.contracts.topics import ENGAGEMENT_TOPIC
from mailsluice.kafka.compacted import CompactedView
from mailsluice.kafka.settings import KafkaSettings

log = logging.getLogger(__name__)

# Every ingest and API replica holds every address, so an entry is kept packed: the record's
# key as bytes ("<tenant>|<address>", engagement_key's form) to (first delivered, last
# delivered, last engaged, unengaged at, deliveries) in 40 bytes; about 190 bytes an address
# in all, where a tuple key and a tuple of floats took over 400.
Entry = bytes
Table = dict[bytes, Entry]
_PACKED = struct.Struct("<4dq")


def entry_of(record: Engagement) -> Entry:
    return _PACKED.pack(
        record.first_delivered,
        record.last_delivered,
        record.last_engaged,
        record.unengaged_at,
        record.deliveries,
    )


def record_of(tenant: str, address: str, entry: Entry | None) -> Engagement | None:
    if entry is None:
        return None
    first, last, engaged, unengaged_at, deliveries = _PACKED.unpack(entry)
    return Engagement(
        tenant=tenant,
        address=address,
        first_delivered=first,
        last_delivered=last,
        last_engaged=engaged,
        deliveries=deliveries,
        unengaged_at=unengaged_at,
        ts=0.0,
    )


def apply_record(table: Table, key: bytes | None, value: bytes | None) -> None:
    """Apply one record of the engagement topic to `table` (a null value removes the entry)."""
    if key is None:
        return
    try:
        name = engagement_key(*parse_engagement_key(key))
    except ValueError:
        log.warning("engagement record with a bad key ignored")
        return
    if value is None:
        table.pop(name, None)
        return
    try:
        table[name] = entry_of(decode_engagement(value))
    except (ValidationError, ValueError, struct.error):
        log.warning("undecodable engagement record ignored")
        table.pop(name, None)


def lookup(table: Table, tenant: str, address: str) -> Engagement | None:
    """The record of `address` (any case, spaces around) for `tenant`, None if there is none."""
    bare = address.strip().lower()
    return record_of(tenant, bare, table.get(engagement_key(tenant, bare)))


def highest_grade(table: Table, tenant: str, recipients: Iterable[str], now: float) -> int:
    """The highest grade of `recipients` for `tenant` at `now` (NOT_GRADED for none)."""
    grades = [grade(lookup(table, tenant, recipient), now) for recipient in recipients]
    return max(grades, default=NOT_GRADED)


def tenant_records(table: Table, tenant: str) -> list[Engagement]:
    """Every record of `tenant` (a tenant name holds no `|`: the prefix is exact)."""
    prefix = f"{tenant}|".encode()
    found = (
        record_of(tenant, key[len(prefix) :].decode(errors="replace"), entry)
        for key, entry in table.items()
        if key.startswith(prefix)
    )
    return [r for r in found if r is not None]


class EngagementStore:
    """The engagement table, loaded from the start of the topic and followed live."""

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        client_id: str = "mailsluice-engagement",
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._client_id = client_id
        self._wall = wall
        self._table: Table = {}
        self._view: CompactedView | None = None

    async def start(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        """Load the whole topic; TimeoutError (after stopping) when that takes too long."""
        if self._view is not None:
            raise RuntimeError("EngagementStore already started")
        self._table = {}
        self._view = CompactedView(
            self._settings,
            ENGAGEMENT_TOPIC,
            lambda k, v: apply_record(self._table, k, v),
            client_id=self._client_id,
        )
        try:
            await self._view.start(timeout)
        except BaseException:
            await self.stop()
            raise
        self._view.follow_in_background()
        log.info("engagement store ready: %d addresses", len(self._table))

    async def stop(self) -> None:
        view, self._view = self._view, None
        if view is not None:
            await view.stop()

    @property
    def ready(self) -> bool:
        return self._view is not None and self._view.ready

    def get(self, tenant: str, address: str) -> Engagement | None:
        return lookup(self._table, tenant, address)

    def grade(self, tenant: str, recipients: Iterable[str]) -> int:
        """Envelope.grade of a message of `tenant` to `recipients`, now."""
        return highest_grade(self._table, tenant, recipients, self._wall())

    def records(self, tenant: str) -> list[Engagement]:
        """Every record of `tenant`."""
        return tenant_records(self._table, tenant)

    def __len__(self) -> int:
        return len(self._table)
