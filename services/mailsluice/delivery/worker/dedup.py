"""Recipients already delivered, so a redelivered record (after a crash or rebalance) and a
client's second copy of a message (sent again after a 451 whose first copy was written anyway)
do not reach them again. Keyed by the envelope's dedup id (its message key, else its queue id)
and the recipient. Bounded LRU: it covers the redelivery window, not all history."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from mailsluice.contracts.events import EventType, decode_event
from mailsluice.contracts.topics import EVENTS_TOPIC
from mailsluice.kafka.admin import partitions_of
from mailsluice.kafka.compacted import read_to_end
from mailsluice.kafka.settings import KafkaSettings

log = logging.getLogger(__name__)


class DeliveredCache:
    def __init__(self, size: int) -> None:
        self._size = size
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._sending: set[tuple[str, str]] = set()

    def __len__(self) -> int:
        return len(self._seen)

    @staticmethod
    def _key(message: str, recipient: str) -> tuple[str, str]:
        return message, recipient.lower()

    def add(self, message: str, recipient: str) -> None:
        if self._size <= 0:
            return
        key = self._key(message, recipient)
        self._seen[key] = None
        self._seen.move_to_end(key)
        while len(self._seen) > self._size:
            self._seen.popitem(last=False)

    def seen(self, message: str, recipient: str) -> bool:
        key = self._key(message, recipient)
        if key in self._seen:
            self._seen.move_to_end(key)
            return True
        return False

    def split(self, message: str, recipients: tuple[str, ...]) -> tuple[list[str], list[str]]:
        """(still to send, already delivered)."""
        todo: list[str] = []
        done: list[str] = []
        for rcpt in recipients:
            (done if self.seen(message, rcpt) else todo).append(rcpt)
        return todo, done

    def claim(
        self, message: str, recipients: tuple[str, ...]
    ) -> tuple[list[str], list[str]] | None:
        """`split`, the recipients to send now marked as being sent until `unclaim`; None when
        another attempt is sending this message to one of them (try again once it is done:
        two copies of a message in flight at once must not both go)."""
        if any(self._key(message, r) in self._sending for r in recipients):
            return None
        todo, done = self.split(message, recipients)
        self._sending.update(self._key(message, r) for r in todo)
        return todo, done

    def unclaim(self, message: str, recipients: list[str]) -> None:
        self._sending.difference_update(self._key(message, r) for r in recipients)


async def warm_from_events(
    kafka: KafkaSettings,
    pool: str,
    cache: DeliveredCache,
    *,
    since: float,
    budget_s: float,
) -> int:
    """Remember recipients of `pool` delivered since `since` (epoch s), read back from the
    events topic. A worker that takes over partitions (after a crash or a rebalance) repeats the
    records past the last commit; their delivery events tell which recipients already have it.
    Returns how many were added; gives up quietly after `budget_s` (dedup is best effort)."""
    consumer = AIOKafkaConsumer(
        **kafka.client_options(),
        client_id="mailsluice-delivery-dedup",
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    added = 0

    def remember(_key: bytes | None, value: bytes | None) -> None:
        nonlocal added
        added += _remember(cache, pool, value)

    try:
        async with asyncio.timeout(budget_s):
            await consumer.start()
            tps = await _partitions(kafka, EVENTS_TOPIC)
            if not tps:
                return 0
            starts = await consumer.offsets_for_times({tp: int(since * 1000) for tp in tps})
            todo = {tp: found.offset for tp, found in starts.items() if found is not None}
            await read_to_end(consumer, list(todo), remember, start=todo)
    except (TimeoutError, KafkaError) as exc:
        # best effort: without it a taken-over record may be sent again, never lost
        log.warning("dedup warm-up stopped (%s; %d remembered)", type(exc).__name__, added)
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()
    return added


async def _partitions(kafka: KafkaSettings, topic: str) -> list[TopicPartition]:
    admin = AIOKafkaAdminClient(**kafka.client_options(), client_id="mailsluice-delivery-dedup")
    try:
        await admin.start()
        return await partitions_of(admin, topic)
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


def _remember(cache: DeliveredCache, pool: str, raw: bytes | None) -> int:
    if not raw:
        return 0
    try:
        event = decode_event(raw)
    except ValueError:
        return 0
    if event.type != EventType.DELIVERY or event.pool != pool:
        return 0
    cache.add(event.message_key or event.queue_id, event.recipient)
    return 1
