"""The shaping engine's side of a running delivery worker: settings, and the Kafka loops that
feed it (operator commands in, status and warm-up usage out).

Wiring into a worker (service.py):

    runtime = ShapingRuntime(load(ShapingSettings), kafka, settings.pool, defaults=...)
    worker = Worker(settings, kafka, transport, shaper=runtime.shaper,
                    on_share=runtime.set_share)  # pool-wide warm-up caps follow rebalances
    runtime.queued = worker.scheduler.queued
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
from collections.abc import Callable, Iterable

from aiokafka import AIOKafkaProducer
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import SettingsConfigDict

from mailsluice.config import MailsluiceSettings
from mailsluice.contracts.control import (
    ControlState,
    DestinationRow,
    Status,
    encode_status,
    status_key,
)
from mailsluice.contracts.topics import CONTROL_TOPIC, WARMUP_TOPIC
from mailsluice.delivery.shaping.engine import PolicyShaper
from mailsluice.delivery.shaping.warmup import WarmupTracker
from mailsluice.kafka.admin import control_topics, ensure_topics
from mailsluice.kafka.clients import make_producer
from mailsluice.kafka.compacted import CompactedView, read_topic
from mailsluice.kafka.retrying import KAFKA_DOWN, until_kafka_answers
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.metrics.shaping import Shaping as shaping_metrics
from mailsluice.policy.backoff import load_rules
from mailsluice.policy.shaping import PolicyInvalid, PoolSection, Rule, load_policy
from mailsluice.policy.warmup import Plan

log = logging.getLogger(__name__)

# Wait between attempts to reach Kafka at start.
START_RETRY_S = 2.0
# The shipped policy's default rate, for a burst given without a rate.
DEFAULT_RATE_PER_S = 100.0


class ShapingSettings(MailsluiceSettings):
    """Shaping engine of delivery workers: policy files, pool overrides, control and status."""

    model_config = SettingsConfigDict(env_prefix="MAILSLUICE_SHAPING_", extra="ignore", frozen=True)

    policy_file: str = Field(
        "", description="Shaping policy TOML (empty: the shipped mailsluice/policy/shaping.toml)."
    )
    backoff_file: str = Field(
        "", description="Adaptive backoff rules TOML (empty: the shipped backoff.toml)."
    )
    pool_overrides: str = Field(
        "",
        description="JSON of this pool's overrides: {defaults, provider, domain, warmup} as in "
        "a policy file's [pool.<name>] section (from the SendingPool resource).",
    )
    status_interval_s: float = Field(
        10.0, gt=0, le=3600, description="How often status and warm-up usage are published."
    )
    worker_id: str = Field("", description="Name in status records (empty: host name and pid).")

    @field_validator("policy_file")
    @classmethod
    def _policy(cls, value: str) -> str:
        _check(lambda: load_policy(value or None))
        return value

    @field_validator("backoff_file")
    @classmethod
    def _rules(cls, value: str) -> str:
        _check(lambda: load_rules(value or None))
        return value

    @field_validator("pool_overrides")
    @classmethod
    def _overrides(cls, value: str) -> str:
        if value:
            try:
                PoolSection.model_validate_json(value)
            except ValidationError as exc:
                raise ValueError(str(exc).replace("\n", "; ")) from None
        return value


def _check(load: Callable[[], object]) -> None:
    try:
        load()
    except PolicyInvalid as exc:
        raise ValueError("; ".join(e.format("file") for e in exc.errors)) from None
    except OSError as exc:
        raise ValueError(f"cannot read: {exc}") from None


def build_shaper(
    settings: ShapingSettings,
    pool: str,
    wall: Callable[[], float],
    defaults: Rule | None = None,
) -> PolicyShaper:
    """The engine of one pool. `defaults` (from the worker's MAILSLUICE_DELIVERY_DEST_*
    settings) are pool defaults; the pool overrides' own defaults win over them."""
    policy = load_policy(settings.policy_file or None)
    section = PoolSection()
    if settings.pool_overrides:
        section = PoolSection.model_validate_json(settings.pool_overrides)
    if defaults is not None:
        merged = {
            **defaults.model_dump(exclude_none=True),
            **section.defaults.model_dump(exclude_none=True),
        }
        section = section.model_copy(update={"defaults": Rule(**merged)})
    if settings.pool_overrides or defaults is not None:
        policy = policy.with_pool(pool, section)
    warmup_config = policy.warmup(pool)
    tracker = None
    if warmup_config is not None:
        plan = Plan.from_config(warmup_config)
        # The owner names this worker's share of a pool-wide cap in the warm-up ledger; it must
        # survive restarts, hence the configured id or "0" (one worker per warming pool).
        owner = settings.worker_id or "0"
        tracker = WarmupTracker(pool, plan, source=warmup_config.source, owner=owner)
    rules = load_rules(settings.backoff_file or None)
    return PolicyShaper(policy, pool, rules=rules, warmup=tracker, wall=wall)


def delivery_defaults(
    concurrency: int | None, rate: float | None, burst: int | None
) -> Rule | None:
    """Pool defaults from the worker's per-destination settings that were set explicitly."""
    fields: dict[str, object] = {}
    if concurrency is not None:
        fields["connection_limit"] = concurrency
    if rate is not None or burst is not None:
        per_s = rate if rate is not None else DEFAULT_RATE_PER_S
        number = f"{per_s:.6f}".rstrip("0").rstrip(".")  # the rate syntax has no exponents
        fields["max_message_rate"] = f"{number}/s" + (f",burst={burst}" if burst else "")
    return Rule.model_validate(fields) if fields else None


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
    ) -> None:
        self.settings = settings
        self.kafka = kafka
        self.pool = pool
        self.wall = wall
        self.mono = mono
        self.worker_id = _worker_id(settings.worker_id)
        self.shaper = build_shaper(settings, pool, wall, defaults)
        self.queued: Callable[[str], int] = lambda _key: 0
        self.control = ControlState()
        self._tasks: list[asyncio.Task[None]] = []
        self._producer: AIOKafkaProducer | None = None
        self._control_view: CompactedView | None = None

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
        producer, self._producer = self._producer, None
        view, self._control_view = self._control_view, None
        for client in (producer, view):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.stop()

    async def start(self) -> None:
        await ensure_topics(self.kafka, control_topics(self.kafka))
        self._producer = make_producer(
            self.kafka, max_message_size=1024 * 1024, client_id="mailsluice-shaping"
        )
        await self._producer.start()
        await self._restore_warmup()
        self.shaper.warmup_ready = True
        self._control_view = CompactedView(
            self.kafka, CONTROL_TOPIC, self._apply, client_id="mailsluice-shaping"
        )
        await self._control_view.start()
        self._tasks += [
            asyncio.create_task(self._control_view.follow(), name="shaping-control"),
            asyncio.create_task(self._publish_loop(), name="shaping-status"),
        ]

    def set_share(self, assigned: int, total: int) -> None:
        """After a rebalance: this worker's share of pool-wide warm-up caps is the share of the
        pool's partitions it owns (exact with one worker, approximate with several)."""
        if self.shaper.warmup is not None and total > 0:
            self.shaper.warmup.share = assigned / total

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
                await self._publish_warmup()
                await self._producer.send_and_wait(
                    CONTROL_TOPIC, None, key=status_key(self.pool, self.worker_id)
                )
        await self._close_clients()

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        cmd = self.control.apply(key, value)
        if cmd is not None and self.shaper.apply_command(cmd, self.mono()):
            log.info("destination %s: %s by %s", cmd.key, cmd.action, cmd.by or "operator")

    async def _publish_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.status_interval_s)
            try:
                await self.publish()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("publishing shaping status failed")

    async def publish(self) -> None:
        """Status to the control topic, warm-up usage to the ledger, and metrics."""
        assert self._producer is not None
        now = self.mono()
        shaping_metrics.export(self.shaper, now)
        rows = status_rows(self.shaper.rows(now, self.queued))
        status = Status(self.pool, self.worker_id, self.wall(), rows)
        await self._producer.send_and_wait(
            CONTROL_TOPIC,
            encode_status(status),
            key=status_key(self.pool, self.worker_id),
        )
        await self._publish_warmup()

    async def _publish_warmup(self) -> None:
        tracker = self.shaper.warmup
        if tracker is None or self._producer is None:
            return
        for key, value in tracker.records():
            await self._producer.send_and_wait(WARMUP_TOPIC, value, key=key)

    async def _restore_warmup(self) -> None:
        tracker = self.shaper.warmup
        if tracker is None:
            return

        def restore(key: bytes | None, value: bytes | None) -> None:
            if key is not None:
                tracker.restore(key, value)

        await read_topic(self.kafka, WARMUP_TOPIC, restore, client_id="mailsluice-warmup")


def status_rows(rows: Iterable[DestinationRow], limit: int = 500) -> tuple[DestinationRow, ...]:
    """The rows worth publishing: not normal first, then by queue size; bounded."""
    ranked = sorted(rows, key=lambda r: (r.state == "normal", -r.queued, r.key))
    return tuple(ranked[:limit])
