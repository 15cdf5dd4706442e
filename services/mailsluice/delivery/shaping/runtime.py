"""The shaping engine's side of a running delivery worker: the Kafka loops that feed it
(operator commands and learned limits in; status, learned limits, state-change events and
warm-up usage out).

Wiring into a worker (service.py):

    runtime = ShapingRuntime(load(ShapingSettings), kafka, settings.pool, defaults=...,
                             sources=outbound.source_addresses)
    worker = Worker(settings, kafka, transport, shaper=runtime.shaper,
                    on_share=runtime.set_share,  # pool-wide warm-up caps follow rebalances
                    on_leave=runtime.flush)  # learned limits out before the next owner reads
    runtime.queued = worker.scheduler.queued
    runtime.lag = lambda: sum(lag for _p, lag in consumer_lag(worker))
    runtime.start_background()  # when Kafka answers: restore warm-up usage, follow control
    ...
    await runtime.stop()        # last warm-up usage and a status tombstone
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Sequence

from mailsluice.contracts.control import (
    ControlState,
    DestinationRow,
    Status,
    decode_learned,
    encode_learned,
    encode_status,
    learned_key,
    status_key,
)
from mailsluice.contracts.events import encode_event
from mailsluice.contracts.topics import CONTROL_TOPIC, EVENTS_TOPIC, WARMUP_TOPIC
from mailsluice.delivery.shaping import status as shaping_status
from mailsluice.delivery.shaping.changes import change_event, log_change
from mailsluice.delivery.shaping.settings import ShapingSettings, build_shaper
from mailsluice.eventloop import wait_event
from mailsluice.kafka.admin import control_topics, ensure_topics
from mailsluice.kafka.clients import make_producer
from mailsluice.kafka.compacted import CompactedView, read_topic
from mailsluice.kafka.outbox import Outbox
from mailsluice.kafka.producers import RenewingProducer
from mailsluice.kafka.retrying import KAFKA_DOWN, until_kafka_answers
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.metrics.shaping import Shaping as shaping_metrics
from mailsluice.policy.shaping import Rule

log = logging.getLogger(__name__)

# Wait between attempts to reach Kafka at start.
START_RETRY_S = 2.0
# How often state changes become log lines and events (promptly: they explain what mail does).
CHANGES_INTERVAL_S = 1.0
# State-change events held while Kafka is away; past that new ones are logged and dropped.
EVENT_BACKLOG = 10_000
STOP_GRACE_S = 5.0


def _worker_id(configured: str) -> str:
    return configured or f"{socket.gethostname()}-{os.getpid()}"


class ShapingRuntime:
    def __init__(
        self,
        settings: ShapingSettings,
        kafka: KafkaSettings,
        pool: str,
        *,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
        defaults: Rule | None = None,
        sources: Sequence[str] = (),
    ) -> None:
        self.settings = settings
        self.kafka = kafka
        self.pool = pool
        self.wall = wall
        self.mono = mono
        self.worker_id = _worker_id(settings.worker_id)
        self.shaper = build_shaper(settings, pool, wall, defaults, sources)
        self.queued: Callable[[str], int] = lambda _key: 0
        # records of the pool's queue topic on this worker's partitions not finished yet
        self.lag: Callable[[], int] = lambda: 0
        self.control = ControlState()
        self._tasks: list[asyncio.Task[None]] = []
        self._producer: RenewingProducer | None = None
        self._events: Outbox | None = None
        self._control_view: CompactedView | None = None
        # `ts` of the last command of this pool applied, published with the status; a command
        # sets `_publish_now`, so the status confirming it follows within a fetch and a write
        self.control_ts = 0.0
        self._publish_now = asyncio.Event()
        # new destinations and troubled ones are reported within seconds too (status.py)
        self._soon = shaping_status.StatusSoon()

    def start_background(self) -> asyncio.Task[None]:
        """Start when Kafka can be reached, retrying meanwhile (the worker connects on its
        own); a warming pool sends nothing until its ledger is restored."""
        if self.shaper.warmup is not None:
            self.shaper.warmup_ready = False
        task = asyncio.create_task(self._start_when_kafka_answers(), name="shaping-start")
        self._tasks.append(task)
        return task

    async def _start_when_kafka_answers(self) -> None:
        await until_kafka_answers(
            self.start,
            retry_s=START_RETRY_S,
            errors=(*KAFKA_DOWN, RuntimeError),
            on_failure=self._not_started,
        )

    async def _not_started(self, exc: Exception) -> None:
        log.warning("shaping runtime cannot start yet (%s); retrying", exc)
        await self._close_clients()

    async def _close_clients(self) -> None:
        events, self._events = self._events, None
        if events is not None:
            await events.stop(STOP_GRACE_S)
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop(STOP_GRACE_S)
        view, self._control_view = self._control_view, None
        if view is not None:
            with contextlib.suppress(Exception):
                await view.stop()

    async def start(self) -> None:
        await ensure_topics(self.kafka, control_topics(self.kafka))
        self._producer = RenewingProducer(
            lambda: make_producer(
                self.kafka, max_message_size=1024 * 1024, client_id="mailsluice-shaping"
            ),
            name="shaping",
        )
        await self._producer.get()
        self._events = Outbox(self._producer, limit=EVENT_BACKLOG, name="shaping-events")
        self._events.start()
        await self._restore_warmup()
        self.shaper.warmup_ready = True
        self._control_view = CompactedView(
            self.kafka, CONTROL_TOPIC, self._apply, client_id="mailsluice-shaping"
        )
        await self._control_view.start()
        self._tasks += [
            asyncio.create_task(self._control_view.follow(), name="shaping-control"),
            asyncio.create_task(self._publish_loop(), name="shaping-status"),
            asyncio.create_task(self._changes_loop(), name="shaping-changes"),
        ]

    def set_share(self, assigned: int, total: int) -> None:
        """After a rebalance: this worker's share of pool-wide warm-up caps is the share of the
        pool's partitions it owns (exact with one worker, approximate with several)."""
        if self.shaper.warmup is not None and total > 0:
            self.shaper.warmup.set_share(assigned / total)

    async def flush(self) -> None:
        """State changes and learned limits not yet published: the worker calls this before it
        leaves its consumer group, so the next owner of its destinations goes on from them (the
        status loop would publish them up to status_interval_s later)."""
        if self._producer is not None and self.shaper.warmup_ready:
            await self._publish_changes()
            await self._publish_learned()

    async def stop(self) -> None:
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._producer is not None and self.shaper.warmup_ready:
            with contextlib.suppress(Exception):
                await self._publish_changes()
                await self._publish_learned()
                await self._publish_warmup()
                await self._send(CONTROL_TOPIC, None, status_key(self.pool, self.worker_id))
        await self._close_clients()

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is not None and value is not None and key.startswith(b"learned/"):
            self._restore_learned(value)
            return
        cmd = self.control.apply(key, value)
        if cmd is not None and self.shaper.apply_command(cmd, self.mono()):
            log.info("destination %s: %s by %s", cmd.key, cmd.action, cmd.by or "operator")
            self.control_ts = cmd.ts
            view = self._control_view
            if view is not None and view.ready:  # a new command, not one replayed at start
                self._publish_now.set()

    async def _publish_loop(self) -> None:
        """Status every status_interval_s, and at once after a command: `destinations list`
        shows a command's effect as the worker reports it, not up to an interval later."""
        while True:
            await wait_event(self._publish_now, self.settings.status_interval_s)
            self._publish_now.clear()
            try:
                await self.publish()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("publishing shaping status failed")

    def _restore_learned(self, value: bytes) -> None:
        try:
            record = decode_learned(value)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("skipping a learned-limits record this version cannot read: %s", exc)
            return
        shaping_status.restore(self.shaper, record, self.mono())

    async def _changes_loop(self) -> None:
        while True:
            await asyncio.sleep(CHANGES_INTERVAL_S)
            try:
                await self._publish_changes()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("publishing destination state changes failed")

    async def _publish_changes(self) -> None:
        """Each state change since the last call: a log line, a destination_state event, a
        metric; then the learned limits they changed."""
        assert self._events is not None
        changes = self.shaper.drain_changes()
        now, wall = self.mono(), self.wall()
        self._soon.note((change for change, _rule in changes), self.shaper.lanes.created)
        if self._soon.due(now):
            self._publish_now.set()
        if not changes:
            return
        for change, rule in changes:
            at = wall + change.at - now
            log_change(self.pool, change, rule, at)
            shaping_metrics.changed(self.pool, change)
            event = encode_event(change_event(self.pool, change, at))
            if not self._events.put((EVENTS_TOPIC, event, change.key.encode(), ())):
                log.error("destination_state event of %s lost: event backlog full", change.key)
        await self._publish_learned()

    async def _send(self, topic: str, value: bytes | None, key: bytes) -> None:
        """One record, acknowledged; a failure replaces the producer (the caller's loop tries
        again at its next round: these records are the latest state, not a history)."""
        assert self._producer is not None
        await self._producer.send_all([(topic, value, key, ())])

    async def _publish_learned(self) -> None:
        for record in shaping_status.learned_records(self.shaper, self.mono()):
            key = learned_key(record.pool, record.source, record.key)
            await self._send(CONTROL_TOPIC, encode_learned(record), key)

    async def publish(self) -> None:
        """Status and learned limits to the control topic, warm-up usage to the ledger, and
        metrics."""
        now = self.mono()
        self._soon.published(now)
        shaping_metrics.export(self.shaper, now)
        rows = status_rows(shaping_status.rows(self.shaper, now, self.queued))
        status = Status(
            self.pool,
            self.worker_id,
            self.wall(),
            rows,
            self.control_ts,
            self.lag(),
            self.settings.status_interval_s,
        )
        await self._send(
            CONTROL_TOPIC, encode_status(status), status_key(self.pool, self.worker_id)
        )
        await self._publish_learned()
        await self._publish_warmup()

    async def _publish_warmup(self) -> None:
        """Every address's usage, a ledger record per (address, scope)."""
        warmup = self.shaper.warmup
        if warmup is None or self._producer is None:
            return
        for key, value in warmup.records():
            await self._send(WARMUP_TOPIC, value, key)

    async def _restore_warmup(self) -> None:
        warmup = self.shaper.warmup
        if warmup is None:
            return

        def restore(key: bytes | None, value: bytes | None) -> None:
            if key is not None:
                warmup.restore(key, value)

        await read_topic(self.kafka, WARMUP_TOPIC, restore, client_id="mailsluice-warmup")


def status_rows(rows: Iterable[DestinationRow], limit: int = 500) -> tuple[DestinationRow, ...]:
    """The rows worth publishing: troubled first, then by queue size; bounded."""
    ranked = sorted(
        rows, key=lambda r: (r.state not in shaping_status.TROUBLED_STATES, -r.queued, r.key)
    )
    return tuple(ranked[:limit])
