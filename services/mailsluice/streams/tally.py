"""The `tally` agent: campaign counters (streams/campaigns.py decides) in faust tables, published
to the compacted topic mailsluice.campaign-stats.

`route` forwards every event that names a campaign to the internal topic
`<app id>-events-by-campaign`, keyed `tenant|campaign`, so one campaign's events are counted in
one partition, in order (one queue id's events keep their order through `route`). Three tables,
all written from that partition (each value notes it, `p`, for the sweeps):

- `campaign-counts`: `tenant|campaign` -> the counters, the offset of the last event applied;
- `campaign-destinations`: `tenant|campaign|destination` -> accepted and finals there;
- `campaign-deferred`: `tenant|campaign|queue id|recipient` -> an entry while the recipient's
  latest event is a transient failure; `deferred` is how many a campaign has (an index in
  memory, rebuilt from the table after every assignment);
- `campaign-engaged`: `tenant|campaign|queue id|recipient` -> the unique-open and -click state
  of a message opened or clicked (streams/engagement.py), swept `engagement_days` after its
  latest event: the bound is the campaign's opened messages of that many days, ~100 bytes each.

A changed campaign is published by a timer, at most once per `campaign_publish_s`; after an
assignment every campaign of the assigned partitions is published again, so a snapshot lost in a
crash is replaced. The counts and destination values are exact across a crash (each skips an
event at or below its offset); a deferral entry is a set or a delete, the same when replayed.
The one inexact case: a crash between a `suppressed` event's delete of a deferral and its
counts write leaves that recipient pending (replayed, the entry is gone, so the event no longer
shows it was accepted).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import faust

from mailsluice.contracts.campaign_stats import encode_stats, stats_key
from mailsluice.contracts.events import Event
from mailsluice.contracts.topics import CAMPAIGN_STATS_TOPIC, TopicSpec
from mailsluice.metrics.streams import Streams as streams_metrics
from mailsluice.streams import campaigns, engagement
from mailsluice.streams.campaigns import Json
from mailsluice.streams.liveness import AgentProgress, Partition

if TYPE_CHECKING:
    from mailsluice.streams.app import StreamsProcessor

log = logging.getLogger(__name__)

COUNTS_TABLE = "campaign-counts"
DESTINATIONS_TABLE = "campaign-destinations"
DEFERRED_TABLE = "campaign-deferred"
ENGAGED_TABLE = "campaign-engaged"
TABLES = (COUNTS_TABLE, DESTINATIONS_TABLE, DEFERRED_TABLE, ENGAGED_TABLE)
DAY_S = 86400


def by_campaign_topic(app_id: str) -> str:
    return f"{app_id}-events-by-campaign"


def tally_topics(app_id: str, partitions: int, isr: dict[str, str]) -> list[TopicSpec]:
    compact = {**isr, "cleanup.policy": "compact"}
    specs = [TopicSpec(by_campaign_topic(app_id), partitions, {**isr, "retention.ms": "604800000"})]
    return specs + [TopicSpec(f"{app_id}-{t}-changelog", partitions, compact) for t in TABLES]


def _campaign_of(key: str, parts: int) -> str:
    """The `tenant|campaign` a table key starts with (names hold no `|`)."""
    return "|".join(key.split("|", parts)[:2])


class CampaignTally:
    """The agent, its topic, tables and publishing timer, on the processor's app."""

    def __init__(self, processor: StreamsProcessor, clock: Any) -> None:
        self.processor = processor
        app = processor.app
        settings = processor.settings
        self.settings = settings
        name = by_campaign_topic(settings.app_id)
        self.topic = app.topic(
            name, key_type=bytes, value_type=bytes, partitions=processor.partitions, internal=True
        )
        self.stats_topic = app.topic(CAMPAIGN_STATS_TOPIC, key_type=bytes, value_type=bytes)
        codecs: Any = faust.Schema(key_serializer="json", value_serializer="json")
        parts = processor.partitions
        self.counts = app.Table(COUNTS_TABLE, partitions=parts, schema=codecs)
        self.destinations = app.Table(DESTINATIONS_TABLE, partitions=parts, schema=codecs)
        self.deferred = app.Table(DEFERRED_TABLE, partitions=parts, schema=codecs)
        self.engaged = app.Table(ENGAGED_TABLE, partitions=parts, schema=codecs)
        app.agent(self.topic, name="tally", concurrency=1)(self._tally)
        app.timer(settings.campaign_publish_s, name="campaign-stats")(self.publish_changed)
        self.progress = AgentProgress(settings.stall_s, lambda: processor.ends(name), clock)
        # campaign -> its partition, for those changed since they were last published
        self.dirty: dict[str, int] = {}
        self._deferred_of: dict[str, int] = defaultdict(int)
        self._destinations_of: dict[str, set[str]] = defaultdict(set)
        self._indexed = False

    def tables(self) -> tuple[Any, ...]:
        return (self.counts, self.destinations, self.deferred, self.engaged)

    # --- route's part ---------------------------------------------------------------------

    async def forward(self, event: Event, value: bytes) -> None:
        key = campaigns.campaign_key(event)
        if key is not None:
            await self.processor.send(self.topic, key.encode(), value, acked=False)

    # --- the agent ------------------------------------------------------------------------

    async def _tally(self, stream: faust.StreamT[bytes]) -> None:
        await self.processor.consume(stream, "tally", self.tally_one, self.progress)

    async def tally_one(self, value: bytes, partition: int) -> None:
        event = self.processor.decode(value, "tally")
        current = faust.current_event()
        key = campaigns.campaign_key(event) if event is not None else None
        if event is None or key is None or current is None:
            return
        self._reindex()
        self.count(key, event, partition, current.message.offset)
        self._sweep(partition)

    def count(self, key: str, event: Event, partition: int, offset: int) -> None:
        """Apply one event of campaign `key` at `offset` of its partition to the tables."""
        old = self.counts.get(key)
        if campaigns.applied(old, offset):
            return  # replayed after a crash: in the tables already
        recipient = campaigns.deferral_key(key, event)
        was_deferred = recipient in self.deferred
        eff = campaigns.effect(event, was_deferred=was_deferred)
        if engagement.tracked(event):
            # the state first: replayed, its stored delta reaches the counts again
            seen = campaigns.engaged_key(key, event)
            state, delta = engagement.step(
                self.engaged.get(seen), event, offset=offset, partition=partition
            )
            self.engaged[seen] = state
            eff = campaigns.with_engagement(eff, delta)
        if eff.deferral == "start" and not was_deferred:
            self.deferred[recipient] = {"d": eff.destination, "t": event.ts, "p": partition}
            self._deferred_of[key] += 1
        elif eff.deferral == "end" and was_deferred:
            self.deferred.pop(recipient, None)
            self._deferred_of[key] -= 1
        if eff.accepted or eff.finished:
            dkey = f"{key}|{eff.destination}"
            found = self.destinations.get(dkey)
            if not campaigns.applied(found, offset):
                self.destinations[dkey] = campaigns.add_destination(
                    found, eff, offset=offset, partition=partition
                )
                self._destinations_of[key].add(eff.destination)
        # the counts last: their offset says the whole event is in
        self.counts[key] = campaigns.add_counts(
            old,
            eff,
            ts=event.ts,
            offset=offset,
            partition=partition,
            pool=campaigns.pool_of(event, eff),
        )
        self.dirty[key] = partition

    # --- publishing (a timer, outside stream iteration: it only reads the tables) ----------

    async def publish_changed(self) -> None:
        if not self.processor.ready()[0]:
            return
        self._reindex()
        for key in list(self.dirty):
            partition = self.dirty.pop(key)
            try:
                await self.publish(key)
            except Exception as exc:  # Kafka will be asked again at the next tick
                self.dirty.setdefault(key, partition)
                log.warning("campaign stats not published (%s); retrying", exc)
                return

    async def publish(self, key: str) -> None:
        counts = self.counts.get(key)
        tenant, _, campaign = key.partition("|")
        record_key = stats_key(tenant, campaign)
        if counts is None:  # swept: the campaign's record goes too
            await (await self.stats_topic.send(key=record_key, value=None))
            return
        dests = {
            d: v
            for d in self._destinations_of.get(key, ())
            if (v := self.destinations.get(f"{key}|{d}")) is not None
        }
        stats = campaigns.snapshot(
            key, counts, dests, self._deferred_of.get(key, 0), now=self.processor.wall()
        )
        await (await self.stats_topic.send(key=record_key, value=encode_stats(stats)))
        streams_metrics.CAMPAIGN_STATS.inc()

    # --- the index of deferrals and destinations -------------------------------------------

    def assigned(self, partitions: list[Partition]) -> None:
        """A new assignment: the index is rebuilt from the recovered tables before use."""
        self._indexed = False

    def revoked(self, partitions: list[Partition]) -> None:
        self.progress.forget(partitions)
        gone = {p for topic, p in partitions if topic == self.topic.get_topic_name()}
        self.dirty = {k: p for k, p in self.dirty.items() if p not in gone}
        self._indexed = False

    def _reindex(self) -> None:
        if self._indexed:
            return
        self._deferred_of.clear()
        self._destinations_of.clear()
        for key in list(self.deferred.keys()):
            self._deferred_of[_campaign_of(key, 2)] += 1
        for key in list(self.destinations.keys()):
            self._destinations_of[_campaign_of(key, 2)].add(key.split("|", 2)[2])
        mine = self._mine()
        for key, raw in list(self.counts.items()):
            if isinstance(raw, dict) and raw.get("p") in mine:
                self.dirty[key] = int(raw["p"])  # published again: a crash may have lost it
        self._indexed = True

    def _mine(self) -> set[int]:
        name = self.topic.get_topic_name()
        try:
            return {
                tp.partition for tp in self.processor.app.consumer.assignment() if tp.topic == name
            }
        except Exception:
            return set()

    # --- housekeeping (inside stream iteration: deletes go to the event's partition) -------

    def _sweep(self, partition: int) -> None:
        if not self.processor.due("tally", partition):
            return
        now = self.processor.wall()
        old_state = now - self.settings.campaign_state_days * DAY_S
        for key, raw in list(self.deferred.items()):
            if _ours(raw, partition) and float(raw.get("t", 0)) < old_state:
                self.deferred.pop(key, None)
                self._deferred_of[_campaign_of(key, 2)] -= 1
        old_engaged = now - self.settings.engagement_days * DAY_S
        for key, raw in list(self.engaged.items()):
            if _ours(raw, partition) and float(raw.get("t", 0)) < old_engaged:
                self.engaged.pop(key, None)
        old = now - self.settings.campaign_days * DAY_S
        for key, raw in list(self.counts.items()):
            if _ours(raw, partition) and float(raw.get("l", 0)) < old:
                self._forget(key)
                self.dirty[key] = partition  # publishes the tombstone

    def _forget(self, key: str) -> None:
        self.counts.pop(key, None)
        for dest in self._destinations_of.pop(key, set()):
            self.destinations.pop(f"{key}|{dest}", None)
        self._deferred_of.pop(key, None)


def _ours(raw: Json | Any, partition: int) -> bool:
    return isinstance(raw, dict) and raw.get("p") == partition
