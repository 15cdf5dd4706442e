"""The faust app: two agents and two tables around the pure rules in `rules`, the campaign
counters' agent (`tally`, streams/tally.py) and the engagement agent (`hygiene`,
streams/hygiene.py).

Events are keyed by queue id, but a recipient's soft-failure state must live in one partition,
so the work is split in two agents (both `concurrency=1`, the design's rule):

- `route` reads mailsluice.events, counts every event (the per-day `daily-counts` table and
  mailsluice_streams_events_total) and forwards the events that matter for suppression to the
  internal topic `<app id>-events-by-address`, keyed by the lower-cased recipient.
- `judge` reads that topic, keeps the `soft-failures` table (address -> days with a counted
  soft failure) and writes suppression records to mailsluice.suppressions (the encoding of
  contracts/suppressions.py, source "streams").

Tables use the memory store plus their changelog topics (rebuilt from the changelog at start);
their partition count is the events topic's, which every internal topic copies, because faust
requires a table's changelog to have as many partitions as the topic its writers read.

Every agent catches its own errors: a faust agent that raises drops its message and stops. An
undecodable event or a bug skips one event (counted in mailsluice_streams_errors_total); a
suppression record is retried until Kafka takes it, since skipping it would lose the entry.
Each agent notes the offsets it finishes, which its liveness weighs against the partitions'
end offsets (streams/liveness.py).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import faust
from pydantic import ValidationError

from mailsluice.contracts.events import Event, decode_event
from mailsluice.contracts.suppressions import (
    Scope,
    Suppression,
    encode_suppression,
    suppression_key,
)
from mailsluice.contracts.topics import EVENTS_TOPIC, SUPPRESSIONS_TOPIC, TopicSpec
from mailsluice.kafka.retrying import until_kafka_answers
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.metrics.streams import Streams as streams_metrics
from mailsluice.streams import rules
from mailsluice.streams.engaged import EngagementDays, engaged_topics
from mailsluice.streams.hygiene import Hygiene, hygiene_topics
from mailsluice.streams.liveness import AgentProgress, Partition, combined
from mailsluice.streams.settings import StreamsSettings
from mailsluice.streams.tally import CampaignTally, tally_topics
from mailsluice.suppression.store import normalize

log = logging.getLogger(__name__)

SOURCE = "streams"
# A suppression record not written is tried again after these waits (doubling up to the max).
SEND_RETRY_FIRST_S = 0.5
SEND_RETRY_MAX_S = 10.0
SOFT_TABLE = "soft-failures"
COUNTERS_TABLE = "daily-counts"


def by_address_topic(app_id: str) -> str:
    return f"{app_id}-events-by-address"


def internal_topics(app_id: str, partitions: int, kafka: KafkaSettings) -> list[TopicSpec]:
    """The app's own topics, created before the worker starts: a topic faust creates while
    joining the group is missing from that first assignment ("Ignoring missing topic"), and
    its agent would then read nothing until the next rebalance."""
    isr = {"min.insync.replicas": str(kafka.min_insync_replicas)}
    compact = {**isr, "cleanup.policy": "compact"}
    return [
        TopicSpec(by_address_topic(app_id), partitions, {**isr, "retention.ms": "604800000"}),
        TopicSpec(f"{app_id}-{SOFT_TABLE}-changelog", partitions, compact),
        TopicSpec(f"{app_id}-{COUNTERS_TABLE}-changelog", partitions, compact),
        *tally_topics(app_id, partitions, isr),
        *engaged_topics(app_id, partitions, isr),
        *hygiene_topics(app_id, partitions, isr),
    ]


def faust_broker_options(kafka: KafkaSettings) -> dict[str, Any]:
    """faust's broker URLs and credentials from the shared Kafka settings."""
    urls = [f"kafka://{host.strip()}" for host in kafka.bootstrap.split(",") if host.strip()]
    # Not kafka.request_timeout_ms: faust refuses a request timeout below its session
    # timeout (60 s), so its own defaults stay.
    options: dict[str, Any] = {"broker": urls}
    client = kafka.client_options()
    ssl_context = client.get("ssl_context")
    if kafka.security_protocol.startswith("SASL"):
        options["broker_credentials"] = faust.SASLCredentials(
            username=kafka.sasl_username,
            password=kafka.sasl_password,
            mechanism=kafka.sasl_mechanism,
            ssl_context=ssl_context,
        )
    elif ssl_context is not None:
        options["broker_credentials"] = faust.SSLCredentials(ssl_context)
    return options


def day_label(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def counter_key(ts: float, pool: str, event_type: str, partition: int) -> str:
    """Key of the daily counters table. The source partition is part of the key: a key belongs
    to one changelog partition, and every partition of the events topic counts every pool."""
    return f"{day_label(ts)}/{pool}/{event_type}/{partition}"


class StreamsProcessor:
    """The faust app with its topics, tables and agents, built from settings."""

    def __init__(
        self,
        settings: StreamsSettings,
        kafka: KafkaSettings,
        partitions: int,
        *,
        wall: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.policy = settings.policy()
        self.partitions = partitions
        self.wall = wall
        self._swept: dict[tuple[str, int], float] = {}
        app_id = settings.app_id
        self.app = faust.App(
            app_id,
            **faust_broker_options(kafka),
            store="memory://",
            autodiscover=False,
            web_enabled=False,
            datadir=Path(tempfile.gettempdir()) / f"{app_id}-data",
            topic_partitions=partitions,
            topic_replication_factor=kafka.replication_factor,
            producer_acks=-1,
            consumer_auto_offset_reset="earliest",
            key_serializer="raw",
            value_serializer="raw",
        )
        app = self.app
        self.events_topic = app.topic(EVENTS_TOPIC, key_type=bytes, value_type=bytes)
        self.by_address = app.topic(
            by_address_topic(app_id),
            key_type=bytes,
            value_type=bytes,
            partitions=partitions,
            internal=True,
        )
        self.suppressions_topic = app.topic(SUPPRESSIONS_TOPIC, key_type=bytes, value_type=bytes)
        # JSON in the changelogs, whatever the app's raw default: keys come back as str.
        codecs: Any = faust.Schema(key_serializer="json", value_serializer="json")
        self.soft = app.Table(SOFT_TABLE, partitions=partitions, schema=codecs)
        self.counters = app.Table(COUNTERS_TABLE, default=int, partitions=partitions, schema=codecs)
        app.agent(self.events_topic, name="route", concurrency=1)(self._route)
        app.agent(self.by_address, name="judge", concurrency=1)(self._judge)
        self.tally = CampaignTally(self, clock)  # campaign stats: streams/tally.py
        self.engagement = EngagementDays(self)  # per tenant and provider: streams/engaged.py
        self.hygiene = Hygiene(self, clock)  # engagement, unengaged: streams/hygiene.py
        # Liveness, per agent: each reads its own topic and can be stuck alone.
        stall_s = settings.stall_s
        self.routed = AgentProgress(stall_s, lambda: self.ends(EVENTS_TOPIC), clock)
        self.judged = AgentProgress(stall_s, lambda: self.ends(by_address_topic(app_id)), clock)
        # Any: mode's handler type (mypy extension arg kinds) matches no method signature.
        app.on_partitions_revoked.connect(cast(Any, self._revoked))
        app.on_partitions_assigned.connect(cast(Any, self._assigned))

    # --- readiness ----------------------------------------------------------------------

    def ready(self) -> tuple[bool, str]:
        """Ready once the tables are recovered from their changelogs and no rebalance runs."""
        recovery: Any = getattr(self.app.tables, "recovery", None)
        if recovery is None:
            return False, "starting"
        if not recovery.completed.is_set():
            return False, "recovering tables"
        if self.app.rebalancing:
            return False, "rebalancing"
        return True, f"{len(self.soft)} addresses with soft failures"

    # --- liveness (streams/liveness.py decides) -----------------------------------------

    def live(self) -> tuple[bool, str]:
        return combined(
            {
                "route": self.routed.progress.check,
                "judge": self.judged.progress.check,
                "tally": self.tally.progress.progress.check,
                "hygiene": self.hygiene.progress.progress.check,
            }
        )

    def ends(self, topic: str) -> dict[Partition, int | None]:
        """End offsets of the assigned partitions of `topic`. None while the tables recover or
        a rebalance runs: no agent processes then, and a long recovery is no stall."""
        if not self.ready()[0]:
            return {}
        consumer = self.app.consumer
        try:
            return {
                (tp.topic, tp.partition): consumer.highwater(tp)
                for tp in consumer.assignment()
                if tp.topic == topic
            }
        except Exception:  # the assignment changed under us; the next probe asks again
            return {}

    async def _revoked(self, _sender: object, *args: Any, **_: Any) -> None:
        """on_partitions_revoked(sender, revoked): taken back, a partition starts again from
        its committed offset."""
        revoked: Iterable[Any] = args[0]
        partitions = [(tp.topic, tp.partition) for tp in revoked]
        self.routed.forget(partitions)
        self.judged.forget(partitions)
        self.tally.revoked(partitions)
        self.engagement.revoked(partitions)
        self.hygiene.progress.forget(partitions)

    async def _assigned(self, _sender: object, *args: Any, **_: Any) -> None:
        self.tally.assigned([(tp.topic, tp.partition) for tp in args[0]])
        self.engagement.assigned()

    # --- agents -------------------------------------------------------------------------

    async def _route(self, stream: faust.StreamT[bytes]) -> None:
        await self.consume(stream, "route", self.route_one, self.routed)

    async def _judge(self, stream: faust.StreamT[bytes]) -> None:
        await self.consume(stream, "judge", self.judge_one, self.judged)

    async def consume(
        self,
        stream: Any,
        agent: str,
        handle: Callable[[bytes, int], Awaitable[None]],
        progress: AgentProgress,
    ) -> None:
        """Handle every event of the stream; an error skips the event (counted, logged)."""
        async for event in stream.events():
            message = event.message
            partition = (message.topic, message.partition)
            progress.started(partition, message.offset)
            try:
                await handle(event.value, message.partition)
            except Exception:
                streams_metrics.ERRORS.labels(agent).inc()
                log.exception("streams %s: event skipped", agent)
            progress.finished(partition, message.offset)

    async def route_one(self, value: bytes, partition: int) -> None:
        """Count one event and forward it by recipient when it can change a suppression."""
        event = self.decode(value, "route")
        if event is None:
            return
        pool = streams_metrics.pool_label(event.pool)
        kind = streams_metrics.type_label(str(event.type))
        self.counters[counter_key(event.ts, pool, kind, partition)] += 1
        streams_metrics.EVENTS.labels(pool, kind).inc()
        if rules.relevant(event):
            address = normalize(event.recipient)
            await self.send(self.by_address, address.encode(), value, acked=False)
        await self.tally.forward(event, value)
        current = faust.current_event()
        if current is not None:
            self.engagement.observe(event, partition, current.message.offset)
            self.engagement.sweep(partition)
        await self.hygiene.forward(event, value)
        self._sweep_counters(partition)

    async def judge_one(self, value: bytes, partition: int) -> None:
        """Apply the rules to one event routed by recipient: suppress, update or forget."""
        event = self.decode(value, "judge")
        if event is None:
            return
        address = normalize(event.recipient)
        if address:
            raw = self.soft.get(address)
            state = rules.SoftState.from_json(raw) if raw is not None else None
            decision = rules.decide(event, state, self.policy)
            # The record first: replaying the event after a crash must find the state that
            # led to it, so the state changes only once Kafka has the suppression.
            if decision.suppress is not None:
                await self.publish(event.recipient.strip(), decision.suppress, decision.scope)
            if decision.changed:
                if decision.state is None:
                    self.soft.pop(address, None)
                else:
                    self.soft[address] = {**decision.state.to_json(), "p": partition}
        self._sweep_soft(partition)

    async def publish(self, address: str, reason: str, scope: str = "global") -> None:
        """Write one suppression record (in the scope of that label) and wait for Kafka's
        acknowledgement."""
        entry = Suppression(address=address, reason=reason, source=SOURCE, scope=scope)
        key, value = suppression_key(address, Scope.parse(scope)), encode_suppression(entry)
        await self.send(self.suppressions_topic, key, value, acked=True)
        streams_metrics.SUPPRESSIONS.labels(reason).inc()
        log.info("suppressed an address: %s", reason)

    async def send(self, topic: Any, key: bytes, value: bytes | None, *, acked: bool) -> None:
        """Send, retrying until Kafka takes the record: skipping it would lose a suppression.
        Unacknowledged sends are flushed by faust before it commits the source offset."""

        async def attempt() -> None:
            sent = await topic.send(key=key, value=value)
            if acked:
                await sent

        def not_written(exc: Exception) -> None:
            log.warning("streams: record to %s not written (%s); retrying", topic, exc)

        await until_kafka_answers(
            attempt,
            retry_s=SEND_RETRY_FIRST_S,
            max_retry_s=SEND_RETRY_MAX_S,
            errors=(Exception,),
            on_failure=not_written,
        )

    @staticmethod
    def decode(value: bytes, agent: str) -> Event | None:
        return decode_or_skip(value, agent)

    # --- housekeeping (inside stream iteration: table deletes go to the event's partition) --

    def due(self, table: str, partition: int) -> bool:
        now = self.wall()
        last = self._swept.get((table, partition))
        if last is not None and now - last < self.settings.sweep_interval_s:
            return False
        self._swept[(table, partition)] = now
        return True

    def _sweep_soft(self, partition: int) -> None:
        if not self.due("soft", partition):
            return
        today = rules.day_of(self.wall())
        stale = [
            key
            for key, raw in list(self.soft.items())
            if isinstance(raw, dict)
            and raw.get("p") == partition
            and rules.stale(rules.SoftState.from_json(raw), today, self.policy)
        ]
        for key in stale:
            self.soft.pop(key, None)

    def _sweep_counters(self, partition: int) -> None:
        if not self.due("counters", partition):
            return
        oldest = day_label(self.wall() - self.settings.counter_days * rules.DAY_S)
        suffix = f"/{partition}"
        old = [k for k in list(self.counters.keys()) if k.endswith(suffix) and k[:10] < oldest]
        for key in old:
            self.counters.pop(key, None)


def decode_or_skip(value: bytes, agent: str) -> Event | None:
    try:
        return decode_event(value)
    except (ValueError, ValidationError) as exc:
        streams_metrics.ERRORS.labels(agent).inc()
        first = (str(exc).splitlines() or [""])[0]
        log.warning("streams %s: undecodable event skipped: %s", agent, first[:200])
        return None
