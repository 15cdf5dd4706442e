"""The `hygiene` agent: each address's engagement with each tenant's mail, published to the
compacted topic mailsluice.engagement, and the unengaged suppressions (the pure rules are
mailsluice/engagement/policy.py).

`route` forwards deliveries, opens and clicks to the internal topic
`<app id>-events-by-engagement`, keyed `tenant|address`, so one address's events are applied in
one partition, in order. The `engagement` table holds the record and the offset of the last
event applied (a replay after a crash skips what is in already, so a delivery counts once).

For each event, in this order: the suppression record or its tombstone (acknowledged), the
engagement record, then the table. A crash in between replays the event, which finds the old
state and writes the same records again.

The policy is the tenant's (its `hygiene` block in the tenants file) over the settings'; an
event of no tenant has no scope to suppress in and only updates the record.

One lift can take too much: the tombstone removes the address's tenant-scope entry, which a
person may have replaced with a manual one since (same key). Suppressing again takes one
`mailsluice suppress add`; reading the suppression topic here to tell would be a second table.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import faust

from mailsluice.config import load
from mailsluice.contracts.engagement import (
    DAY_S,
    Engagement,
    encode_engagement,
    engagement_key,
)
from mailsluice.contracts.events import Event
from mailsluice.contracts.suppressions import Scope, ScopeKind, suppression_key
from mailsluice.contracts.topics import ENGAGEMENT_TOPIC, TopicSpec
from mailsluice.engagement import policy
from mailsluice.engagement.settings import HygieneSettings
from mailsluice.metrics.streams import Streams as streams_metrics
from mailsluice.streams.liveness import AgentProgress
from mailsluice.tenancy.registry import Registry
from mailsluice.tenancy.settings import TenancySettings

if TYPE_CHECKING:
    from mailsluice.streams.app import StreamsProcessor

log = logging.getLogger(__name__)

TABLE = "engagement"


def by_engagement_topic(app_id: str) -> str:
    return f"{app_id}-events-by-engagement"


def hygiene_topics(app_id: str, partitions: int, isr: dict[str, str]) -> list[TopicSpec]:
    compact = {**isr, "cleanup.policy": "compact"}
    return [
        TopicSpec(by_engagement_topic(app_id), partitions, {**isr, "retention.ms": "604800000"}),
        TopicSpec(f"{app_id}-{TABLE}-changelog", partitions, compact),
    ]


class Hygiene:
    """The agent, its topic and table, on the processor's app."""

    def __init__(
        self, processor: StreamsProcessor, clock: Any, tenants: Registry | None = None
    ) -> None:
        self.processor = processor
        app = processor.app
        settings = processor.settings
        hygiene = load(HygieneSettings)
        self.default = hygiene.policy()
        self.forget_s = hygiene.forget_days * DAY_S
        self.tenants = tenants if tenants is not None else Registry(load(TenancySettings).file)
        name = by_engagement_topic(settings.app_id)
        self.topic = app.topic(
            name, key_type=bytes, value_type=bytes, partitions=processor.partitions, internal=True
        )
        self.engagement_topic = app.topic(ENGAGEMENT_TOPIC, key_type=bytes, value_type=bytes)
        codecs: Any = faust.Schema(key_serializer="json", value_serializer="json")
        self.table = app.Table(TABLE, partitions=processor.partitions, schema=codecs)
        app.agent(self.topic, name="hygiene", concurrency=1)(self._hygiene)
        self.progress = AgentProgress(settings.stall_s, lambda: processor.ends(name), clock)

    async def forward(self, event: Event, value: bytes) -> None:
        """route's part: the events that change an address's engagement, by tenant|address."""
        if policy.relevant(event):
            key = engagement_key(event.tenant, event.recipient)
            await self.processor.send(self.topic, key, value, acked=False)

    async def _hygiene(self, stream: faust.StreamT[bytes]) -> None:
        await self.processor.consume(stream, "hygiene", self.apply_one, self.progress)

    async def apply_one(self, value: bytes, partition: int) -> None:
        event = self.processor.decode(value, "hygiene")
        current = faust.current_event()
        if event is not None and current is not None and policy.relevant(event):
            await self.apply(event, partition, current.message.offset)

    async def apply(self, event: Event, partition: int, offset: int) -> None:
        """Apply one event at `offset` of its partition: suppress or lift, publish, note."""
        key = engagement_key(event.tenant, event.recipient).decode()
        stored = self.table.get(key)
        if isinstance(stored, dict) and int(stored.get("o", -1)) >= offset:
            return  # replayed after a crash: in the table already
        record = _record(stored)
        scope = _tenant_scope(event.tenant)
        rules = policy.policy_for(self.default, self.tenants.get(event.tenant))
        step = policy.step(record, event, rules, suppressible=scope is not None)
        if step.record is None:
            return
        address = step.record.address
        if step.suppress and scope is not None:
            await self.processor.publish(address, policy.UNENGAGED, scope.label)
        elif step.lift and scope is not None:
            await self.lift(address, scope)
        out = step.record.model_copy(update={"ts": self.processor.wall()})
        await self.processor.send(
            self.engagement_topic, key.encode(), encode_engagement(out), acked=False
        )
        self.table[key] = {"r": out.model_dump(mode="json"), "o": offset, "p": partition}
        await self._sweep(partition)

    async def lift(self, address: str, scope: Scope) -> None:
        """The tombstone of the address's unengaged suppression (it engaged again)."""
        topic = self.processor.suppressions_topic
        await self.processor.send(topic, suppression_key(address, scope), None, acked=True)
        streams_metrics.UNENGAGED_LIFTED.inc()
        log.info("lifted an unengaged suppression: the address engaged again")

    async def _sweep(self, partition: int) -> None:
        """Forget the addresses of this partition idle for forget_days (inside stream
        iteration: the table's deletes go to the event's partition)."""
        if not self.processor.due("hygiene", partition):
            return
        oldest = self.processor.wall() - self.forget_s
        for key, stored in list(self.table.items()):
            mine = isinstance(stored, dict) and stored.get("p") == partition
            record = _record(stored) if mine else None
            if record is not None and max(record.last_delivered, record.last_engaged) < oldest:
                self.table.pop(key, None)
                await self.processor.send(self.engagement_topic, key.encode(), None, acked=False)


def _record(stored: Any) -> Engagement | None:
    if not isinstance(stored, dict) or not isinstance(stored.get("r"), dict):
        return None
    try:
        return Engagement.model_validate(stored["r"])
    except ValueError:
        return None


def _tenant_scope(tenant: str) -> Scope | None:
    if not tenant:
        return None
    try:
        scope = Scope.parse(f"tenant:{tenant}")
    except ValueError:
        return None
    return scope if scope.kind is ScopeKind.TENANT else None
