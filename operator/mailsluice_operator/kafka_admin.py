"""The operator's Kafka edge: a pool's queue topic (create or grow) and its consumer lag."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic

from mailsluice.contracts.limits import DEFAULT_MAX_MESSAGE_SIZE
from mailsluice.contracts.topics import WARMUP_TOPIC, TopicSpec, queue_topic, queue_topic_spec
from mailsluice.kafka.admin import (
    TopicChange,
    existing_partitions,
    partitions_of,
    plan_topic_changes,
)
from mailsluice.kafka.compacted import read_to_end
from mailsluice.kafka.settings import KafkaSettings

log = logging.getLogger(__name__)


class KafkaUnavailable(RuntimeError):
    """Kafka did not answer within the operator's timeout, or refused the request."""


@dataclass(frozen=True)
class PoolKafkaState:
    change: TopicChange  # what ensure_topics did: created, grown, unchanged, shrink-refused
    partitions: int  # partitions the topic has now
    lag: int  # total over partitions: end offset minus the group's committed offset
    # Latest warm-up ledger records of the pool (key -> value), for today's usage.
    warmup_records: dict[bytes, bytes] = field(default_factory=dict)


def lag_of(
    ends: dict[TopicPartition, int],
    beginnings: dict[TopicPartition, int],
    committed: dict[TopicPartition, int],
) -> int:
    """KEDA's sum of per-partition lag; no commit yet counts from the earliest offset, as our
    consumers start there (auto_offset_reset=earliest)."""
    total = 0
    for tp, end in ends.items():
        offset = committed.get(tp, -1)
        if offset < 0:
            offset = beginnings.get(tp, 0)
        total += max(end - offset, 0)
    return total


async def ensure_topic(
    admin: AIOKafkaAdminClient, settings: KafkaSettings, spec: TopicSpec
) -> TopicChange:
    """Create the topic or grow it; never shrink (Kafka cannot): as kafka.admin.ensure_topics,
    on a client the caller keeps."""
    (change,) = plan_topic_changes(await existing_partitions(admin), [spec])
    if change.action == "created":
        topic = NewTopic(
            spec.name, spec.partitions, settings.replication_factor, None, spec.configs
        )
        response = await admin.create_topics([topic])
        for topic_error in response.topic_errors:
            if topic_error[1] not in (0, 36):  # 36: TOPIC_ALREADY_EXISTS, a concurrent creator
                raise RuntimeError(
                    f"creating topic {spec.name} failed: Kafka error {topic_error[1]}"
                )
    elif change.action == "grown":
        await admin.create_partitions({spec.name: NewPartitions(spec.partitions)})
    if change.action != "unchanged":
        log.info("topic %s: %s (%d partitions)", spec.name, change.action, change.partitions)
    return change


async def consumer_lag(
    admin: AIOKafkaAdminClient, consumer: AIOKafkaConsumer, topic: str, group: str
) -> tuple[int, int]:
    """(lag, partitions) of `group` on `topic`."""
    parts = await partitions_of(admin, topic)
    if not parts:
        return 0, 0
    offsets = await admin.list_consumer_group_offsets(group, partitions=parts)
    committed = {tp: meta.offset for tp, meta in offsets.items()}
    ends = await consumer.end_offsets(parts)
    beginnings = await consumer.beginning_offsets(parts)
    return lag_of(ends, beginnings, committed), len(parts)


async def read_compacted(
    admin: AIOKafkaAdminClient, consumer: AIOKafkaConsumer, topic: str, prefix: bytes
) -> dict[bytes, bytes]:
    """The latest value of every key starting with `prefix` (a missing topic reads as empty).

    The consumer must be this caller's alone: assign() replaces its assignment.
    """
    latest: dict[bytes, bytes] = {}

    def keep(key: bytes | None, value: bytes | None) -> None:
        if key is None or not key.startswith(prefix):
            return
        if value is None:
            latest.pop(key, None)
        else:
            latest[key] = value

    await read_to_end(consumer, await partitions_of(admin, topic), keep)
    return latest


class KafkaRounds:
    """The operator's Kafka rounds (topic, then lag) on one admin client and one consumer.

    The clients live as long as the operator: aiokafka can leak a connection when a client is
    closed or cancelled while it connects, so the operator opens them once, not per round. A
    failed round closes them and the next round opens new ones. A round runs as its own task, so
    a caller's timeout or cancellation never interrupts a request half-way; `close()` waits for
    the rounds still running and closes the clients, at operator exit.
    """

    def __init__(self, settings: KafkaSettings, timeout_s: float) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self._pending: set[asyncio.Task[PoolKafkaState]] = set()
        self._clients: tuple[AIOKafkaAdminClient, AIOKafkaConsumer, AIOKafkaConsumer] | None = None
        self._lock = asyncio.Lock()
        self._ledger_lock = asyncio.Lock()  # the ledger consumer's assignment is per read

    async def _open(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer, AIOKafkaConsumer]:
        async with self._lock:
            if self._clients is None:
                opts = {**self.settings.client_options(), "client_id": "mailsluice-operator"}
                admin = AIOKafkaAdminClient(**opts)
                consumer = AIOKafkaConsumer(**opts, group_id=None)
                ledger = AIOKafkaConsumer(**opts, group_id=None, enable_auto_commit=False)
                try:
                    await admin.start()
                    await consumer.start()
                    await ledger.start()
                except BaseException:
                    await _close(admin, consumer, ledger)
                    raise
                self._clients = (admin, consumer, ledger)
            return self._clients

    async def _reset(self) -> None:
        async with self._lock:
            if self._clients is not None:
                await _close(*self._clients)
                self._clients = None

    async def _round(self, topic: str, partitions: int, group: str) -> PoolKafkaState:
        try:
            admin, consumer, ledger = await self._open()
            pool = topic.removeprefix(queue_topic(""))
            spec = queue_topic_spec(
                pool, partitions, DEFAULT_MAX_MESSAGE_SIZE, self.settings.min_insync_replicas
            )
            change = await ensure_topic(admin, self.settings, spec)
            lag, have = await consumer_lag(admin, consumer, topic, group)
            async with self._ledger_lock:
                records = await read_compacted(admin, ledger, WARMUP_TOPIC, f"{pool}/".encode())
        except Exception:
            await self._reset()
            raise
        return PoolKafkaState(change, have or change.partitions, lag, records)

    async def __call__(self, topic: str, partitions: int, group: str) -> PoolKafkaState:
        task = asyncio.create_task(self._round(topic, partitions, group))
        self._pending.add(task)
        task.add_done_callback(self._done)
        try:
            return await asyncio.wait_for(asyncio.shield(task), self.timeout_s)
        except TimeoutError:
            raise KafkaUnavailable(f"Kafka did not answer within {self.timeout_s:g}s") from None
        except Exception as exc:  # aiokafka raises many types; the pool reports any as a condition
            raise KafkaUnavailable(f"{type(exc).__name__}: {exc}") from exc

    def _done(self, task: asyncio.Task[PoolKafkaState]) -> None:
        self._pending.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved here, so an abandoned failure is not logged as lost

    async def close(self, timeout_s: float) -> None:
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=timeout_s)
        await self._reset()


async def _close(
    admin: AIOKafkaAdminClient, consumer: AIOKafkaConsumer, ledger: AIOKafkaConsumer
) -> None:
    # All are safe to close when start() failed half-way.
    await ledger.stop()
    await consumer.stop()
    await admin.close()
