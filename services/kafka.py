"""Kafka clients and topics, configured the one way every service uses them.

Producers are idempotent with acks=all: a record acknowledged to us is on every in-sync
replica, which is what lets ingest answer 250. Topics are created by the project with explicit
partitions and sizes; broker auto-creation is never relied on.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic

from mailsluice import contracts
from mailsluice.config import KafkaSettings

log = logging.getLogger(__name__)

TOPIC_ALREADY_EXISTS = 36

# Room for the record's headers (envelope) and batch overhead on top of the message itself.
RECORD_OVERHEAD_BYTES = 64 * 1024


def record_limit(max_message_size: int) -> int:
    """max.message.bytes / max_request_size that fits a message of the advertised SIZE."""
    return max_message_size + RECORD_OVERHEAD_BYTES


def make_producer(
    settings: KafkaSettings, *, max_message_size: int, client_id: str, **overrides: Any
) -> AIOKafkaProducer:
    opts: dict[str, Any] = {
        **settings.client_options(),
        "client_id": client_id,
        "acks": "all",
        "enable_idempotence": True,
        "max_request_size": record_limit(max_message_size),
        "linger_ms": 2,
        "max_batch_size": 256 * 1024,
    }
    opts.update(overrides)
    return AIOKafkaProducer(**opts)


def make_consumer(
    settings: KafkaSettings, *topics: str, group_id: str | None, client_id: str, **overrides: Any
) -> AIOKafkaConsumer:
    opts: dict[str, Any] = {
        **settings.client_options(),
        "client_id": client_id,
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed",
        "max_partition_fetch_bytes": 8 * 1024 * 1024,
        "fetch_max_bytes": 64 * 1024 * 1024,
    }
    opts.update(overrides)
    return AIOKafkaConsumer(*topics, **opts)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    configs: dict[str, str] = field(default_factory=dict)


def standard_topics(
    settings: KafkaSettings, pools: list[str], max_message_size: int
) -> list[TopicSpec]:
    """Every topic the pipeline needs for the given pools."""
    big = {
        "max.message.bytes": str(record_limit(max_message_size)),
        "min.insync.replicas": str(settings.min_insync_replicas),
    }
    specs = [TopicSpec(contracts.queue_topic(p), settings.queue_partitions, big) for p in pools]
    specs += [
        TopicSpec(contracts.retry_topic(name), settings.queue_partitions, big)
        for name, _ in contracts.RETRY_TIERS
    ]
    specs.append(
        TopicSpec(
            contracts.EVENTS_TOPIC,
            6,
            {"min.insync.replicas": str(settings.min_insync_replicas), "retention.ms": "604800000"},
        )
    )
    specs.append(
        TopicSpec(
            contracts.SUPPRESSIONS_TOPIC,
            3,
            {
                "cleanup.policy": "compact",
                "min.insync.replicas": str(settings.min_insync_replicas),
                "min.compaction.lag.ms": "60000",
            },
        )
    )
    return specs + control_topics(settings)


def control_topics(settings: KafkaSettings) -> list[TopicSpec]:
    """The compacted topics of the shaping engine (control and warm-up ledger)."""
    compact = {
        "cleanup.policy": "compact",
        "min.insync.replicas": str(settings.min_insync_replicas),
        "min.compaction.lag.ms": "60000",
    }
    return [
        TopicSpec(contracts.CONTROL_TOPIC, 1, compact),
        TopicSpec(contracts.WARMUP_TOPIC, 3, compact),
    ]


@dataclass(frozen=True)
class TopicChange:
    name: str
    action: str  # "created", "grown", "unchanged", "shrink-refused"
    partitions: int


def plan_topic_changes(existing: dict[str, int], wanted: list[TopicSpec]) -> list[TopicChange]:
    """What ensure_topics will do; partitions only ever grow."""
    changes = []
    for spec in wanted:
        have = existing.get(spec.name)
        if have is None:
            changes.append(TopicChange(spec.name, "created", spec.partitions))
        elif have < spec.partitions:
            changes.append(TopicChange(spec.name, "grown", spec.partitions))
        elif have > spec.partitions:
            changes.append(TopicChange(spec.name, "shrink-refused", have))
        else:
            changes.append(TopicChange(spec.name, "unchanged", have))
    return changes


async def existing_partitions(admin: AIOKafkaAdminClient) -> dict[str, int]:
    described = await admin.describe_topics()
    return {t["topic"]: len(t["partitions"]) for t in described if not t["error_code"]}


async def _usable_topics(admin: AIOKafkaAdminClient, wanted: dict[str, int]) -> set[str]:
    described = await admin.describe_topics(list(wanted))
    return {
        t["topic"]
        for t in described
        if not t["error_code"]
        and len(t["partitions"]) >= wanted.get(t["topic"], 0)
        and all(p["leader"] >= 0 for p in t["partitions"])
    }


async def _wait_usable(admin: AIOKafkaAdminClient, wanted: dict[str, int], wait_s: float) -> None:
    """Wait until every topic shows its partitions, each with a leader.

    A new topic reaches the brokers' metadata a moment after CreateTopics returns; a service
    started right after must find it usable.
    """
    deadline = asyncio.get_running_loop().time() + wait_s
    while wanted and not (await _usable_topics(admin, wanted)) >= set(wanted):
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"topics not usable after {wait_s:.0f}s: {sorted(wanted)}")
        await asyncio.sleep(0.2)


async def wait_for_topics(
    settings: KafkaSettings, wanted: dict[str, int], wait_s: float = 30.0
) -> None:
    admin = AIOKafkaAdminClient(**settings.client_options(), client_id="mailsluice-admin")
    await admin.start()
    try:
        await _wait_usable(admin, wanted, wait_s)
    finally:
        await admin.close()


async def _create(
    admin: AIOKafkaAdminClient, settings: KafkaSettings, specs: list[TopicSpec]
) -> set[str]:
    """Create topics; returns those another creator made first (TOPIC_ALREADY_EXISTS)."""
    response = await admin.create_topics(
        [
            NewTopic(s.name, s.partitions, settings.replication_factor, None, s.configs)
            for s in specs
        ]
    )
    raced = set()
    for topic_error in response.topic_errors:
        name, code = topic_error[0], topic_error[1]
        if code == TOPIC_ALREADY_EXISTS:
            raced.add(name)
        elif code:
            raise RuntimeError(f"creating topic {name} failed with Kafka error {code}")
    return raced


async def ensure_topics(
    settings: KafkaSettings, wanted: list[TopicSpec], wait_s: float = 30.0
) -> list[TopicChange]:
    """Create missing topics and grow short ones, never shrink (Kafka cannot), and return once
    every wanted topic is usable."""
    admin = AIOKafkaAdminClient(**settings.client_options(), client_id="mailsluice-admin")
    await admin.start()
    try:
        changes = plan_topic_changes(await existing_partitions(admin), wanted)
        created = [s for s, c in zip(wanted, changes, strict=True) if c.action == "created"]
        raced = await _create(admin, settings, created) if created else set()
        if raced:
            # A topic another creator just made is not described yet: wait, then plan it again
            # so it is grown if it is short, and reported for what really happened.
            await _wait_usable(admin, dict.fromkeys(raced, 1), wait_s)
            again = plan_topic_changes(
                await existing_partitions(admin), [s for s in wanted if s.name in raced]
            )
            redone = {c.name: c for c in again}
            changes = [redone.get(c.name, c) for c in changes]
        grow = {c.name: NewPartitions(c.partitions) for c in changes if c.action == "grown"}
        if grow:
            await admin.create_partitions(grow)
        await _wait_usable(admin, {s.name: s.partitions for s in wanted}, wait_s)
        for change in changes:
            if change.action != "unchanged":
                log.info(
                    "topic %s: %s (%d partitions)", change.name, change.action, change.partitions
                )
        return changes
    finally:
        await admin.close()


async def topic_partitions(
    settings: KafkaSettings, topic: str, wait_s: float = 0.0
) -> list[TopicPartition]:
    """The partitions of `topic`, waiting up to `wait_s` for it to exist. A consumer without a
    group learns no topic metadata by itself, so readers that assign partitions ask here."""
    admin = AIOKafkaAdminClient(**settings.client_options(), client_id="mailsluice-admin")
    await admin.start()
    try:
        deadline = asyncio.get_running_loop().time() + wait_s
        while True:
            described = await admin.describe_topics([topic])
            for item in described:
                if item["topic"] == topic and not item["error_code"] and item["partitions"]:
                    ids = sorted(p["partition"] for p in item["partitions"])
                    return [TopicPartition(topic, p) for p in ids]
            if asyncio.get_running_loop().time() >= deadline:
                raise TimeoutError(f"topic {topic} does not exist (run `mailsluice topics create`)")
            await asyncio.sleep(0.5)
    finally:
        await admin.close()
