"""Engagement per tenant and provider over time windows, counted inside the `route` agent (it
reads mailsluice.events, keyed by queue id, so one message's opens and clicks reach one
partition in order; streams/engagement.py decides what each adds), published to the compacted
topic mailsluice.engagement-days (contracts/engagement_stats.py) and counted in Prometheus per pool
and provider only.

Two tables, written from the events partition (each value notes it, `p`, for the sweeps):

- `engagement-seen`: `queue id|recipient` -> the unique-open and -click state of a message
  opened or clicked, swept `engagement_days` after its latest event. Memory bound: one entry
  (~100 bytes) per message and recipient opened or clicked in that many days; deliveries add
  none.
- `engagement-days`: `tenant|provider|day|partition` -> the day's counts and the offset of the
  last event applied (a replayed event is not counted twice). Daily buckets: the windows
  (1, 7, 30 days) are sums of whole UTC days, at most `engagement_days` buckets per tenant,
  provider and partition; hourly ones would give a sliding 24 hours at 24 times the records,
  and the rates of mail delivered a day ago barely move within the day. Bounded by tenants x
  providers (raw domains count as `other`) x days x partitions.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import faust

from mailsluice.contracts.engagement_stats import (
    COUNTS,
    EngagementBucket,
    bucket_key,
    encode_bucket,
    parse_bucket_key,
)
from mailsluice.contracts.events import Event, EventType
from mailsluice.contracts.topics import ENGAGEMENT_DAYS_TOPIC, EVENTS_TOPIC, TopicSpec
from mailsluice.metrics.labels import provider_label
from mailsluice.metrics.streams import Streams as streams_metrics
from mailsluice.streams import engagement
from mailsluice.streams.engagement import Json

if TYPE_CHECKING:
    from mailsluice.streams.app import StreamsProcessor

log = logging.getLogger(__name__)

SEEN_TABLE = "engagement-seen"
DAYS_TABLE = "engagement-days"
DAY_S = 86400


def engaged_topics(app_id: str, partitions: int, isr: dict[str, str]) -> list[TopicSpec]:
    compact = {**isr, "cleanup.policy": "compact"}
    return [
        TopicSpec(f"{app_id}-{t}-changelog", partitions, compact) for t in (SEEN_TABLE, DAYS_TABLE)
    ]


def day_of(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def day_key(event: Event, partition: int) -> str | None:
    """The bucket an event counts in, None for events that count nowhere."""
    if event.type is EventType.DELIVERY:
        ts = event.ts
    elif engagement.tracked(event):
        ts = engagement.cohort_ts(event)
    else:
        return None
    if "|" in event.tenant:
        return None
    return bucket_key(event.tenant, provider_label(event.routing_key), day_of(ts), partition)


def count_day(value: Json | None, delta: dict[str, int], *, offset: int, partition: int) -> Json:
    return {"c": engagement.add((value or {}).get("c"), delta), "o": offset, "p": partition}


def bucket_of(key: str, value: Json, now: float) -> EngagementBucket:
    tenant, provider, day, partition = parse_bucket_key(key)
    found = value.get("c") or {}
    numbers = {name: int(found.get(name, 0)) for name in COUNTS}
    return EngagementBucket(
        tenant=tenant, provider=provider, day=day, partition=partition, ts=now, **numbers
    )


# a delta's count -> (the Prometheus counter's attribute on Streams, its `kind`)
_METRIC_OF = {
    "opens": ("OPENS", "all"),
    "opens_human": ("OPENS", "human"),
    "clicks": ("CLICKS", "all"),
    "clicks_human": ("CLICKS", "human"),
}


def observed(metrics: Any, event: Event, delta: dict[str, int]) -> None:
    """The Prometheus counters of one event's deltas (per pool and provider only)."""
    pool = metrics.pool_label(event.pool)
    provider = provider_label(event.routing_key)
    for name, n in delta.items():
        if name == "delivered":
            metrics.DELIVERED.labels(pool, provider).inc(n)
        elif name == "every_link":
            metrics.EVERY_LINK.labels(pool, provider).inc(n)
        elif n > 0:
            attr, kind = _METRIC_OF[name]
            getattr(metrics, attr).labels(pool, provider, kind).inc(n)
        elif n < 0:  # counters only grow: a human open or click taken back counts on its own
            metrics.RETRACTED.labels(pool, provider, name.removesuffix("s_human")).inc(-n)


class EngagementDays:
    """The tables and the publishing timer, on the processor's app; `observe` runs in route."""

    def __init__(self, processor: StreamsProcessor) -> None:
        self.processor = processor
        app = processor.app
        self.settings = processor.settings
        codecs: Any = faust.Schema(key_serializer="json", value_serializer="json")
        parts = processor.partitions
        self.seen = app.Table(SEEN_TABLE, partitions=parts, schema=codecs)
        self.days = app.Table(DAYS_TABLE, partitions=parts, schema=codecs)
        self.topic = app.topic(ENGAGEMENT_DAYS_TOPIC, key_type=bytes, value_type=bytes)
        app.timer(self.settings.engagement_publish_s, name="engagement")(self.publish_changed)
        self.dirty: set[str] = set()
        self._republished = False

    def observe(self, event: Event, partition: int, offset: int) -> None:
        """Count one event of the events partition `partition` at `offset`."""
        self._republish()
        key = day_key(event, partition)
        if key is None:
            return
        delta = {"delivered": 1} if event.type is EventType.DELIVERY else {}
        if engagement.tracked(event):
            seen = engagement.seen_key(event)
            # the state first: replayed, its stored delta reaches the bucket again
            state, delta = engagement.step(
                self.seen.get(seen), event, offset=offset, partition=partition
            )
            self.seen[seen] = state
        old = self.days.get(key)
        if not delta or int((old or {}).get("o", -1)) >= offset:
            return
        self.days[key] = count_day(old, delta, offset=offset, partition=partition)
        self.dirty.add(key)
        observed(streams_metrics, event, delta)

    async def publish_changed(self) -> None:
        if not self.processor.ready()[0]:
            return
        now = self.processor.wall()
        for key in sorted(self.dirty):
            value = self.days.get(key)
            try:
                record = None if value is None else encode_bucket(bucket_of(key, value, now))
                await (await self.topic.send(key=key.encode(), value=record))
            except Exception as exc:  # Kafka will be asked again at the next tick
                log.warning("engagement not published (%s); retrying", exc)
                return
            self.dirty.discard(key)

    def sweep(self, partition: int) -> None:
        """Inside stream iteration: forget old message states and day buckets."""
        if not self.processor.due("engagement", partition):
            return
        now = self.processor.wall()
        oldest = now - self.settings.engagement_days * DAY_S
        for key, raw in list(self.seen.items()):
            if _ours(raw, partition) and float(raw.get("t", 0)) < oldest:
                self.seen.pop(key, None)
        first_day = day_of(oldest)
        for key, raw in list(self.days.items()):
            if _ours(raw, partition) and key.split("|")[2] < first_day:
                self.days.pop(key, None)
                self.dirty.add(key)  # the tombstone

    # --- after a rebalance: the partitions' buckets are published again (a crash may have
    # lost their latest records), once the tables are recovered (the first event) ------------

    def assigned(self) -> None:
        self._republished = False

    def revoked(self, partitions: list[tuple[str, int]]) -> None:
        gone = {p for topic, p in partitions if topic == EVENTS_TOPIC}
        self.dirty = {k for k in self.dirty if int(k.rsplit("|", 1)[1]) not in gone}
        self._republished = False

    def _republish(self) -> None:
        if self._republished:
            return
        mine = self._mine()
        self.dirty |= {k for k, raw in list(self.days.items()) if _ours_any(raw, mine)}
        self._republished = True

    def _mine(self) -> set[int]:
        try:
            assignment = self.processor.app.consumer.assignment()
        except Exception:
            return set()
        return {tp.partition for tp in assignment if tp.topic == EVENTS_TOPIC}


def _ours(raw: Json | Any, partition: int) -> bool:
    return isinstance(raw, dict) and raw.get("p") == partition


def _ours_any(raw: Json | Any, partitions: set[int]) -> bool:
    return isinstance(raw, dict) and raw.get("p") in partitions
