"""Topic administration: topics are created by the project with explicit partitions and sizes
(broker auto-creation is never relied on), grown but never shrunk, and usable before a service
starts on them."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic

from mailsluice.contracts.topics import TopicSpec, control_topic_specs, topic_specs
from mailsluice.kafka.settings import KafkaSettings

log = logging.getLogger(__name__)

TOPIC_ALREADY_EXISTS = 36


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


async def partitions_of(admin: AIOKafkaAdminClient, topic: str) -> list[TopicPartition]:
    """The partitions of `topic` in partition order; none when it does not exist (yet)."""
    described = await admin.describe_topics([topic])
    ids = sorted(
        p["partition"]
        for item in described
        if item["topic"] == topic and not item["error_code"]
        for p in item["partitions"]
    )
    return [TopicPartition(topic, p) for p in ids]


async def topic_partitions(
    settings: KafkaSettings, topic: str, wait_s: float = 0.0
) -> list[TopicPartition]:
    """The partitions of `topic`, waiting up to `wait_s` for it to exist. A consumer without a
    group learns no topic metadata by itself, so readers that assign partitions ask here."""
    admin = AIOKafkaAdminClient(**settings.client_options(), client_id="mailsluice-admin")
    await admin.start()
    try:
        deadline = asyncio.get_running_loop().time() + wait_s
        while not (found := await partitions_of(admin, topic)):
            if asyncio.get_running_loop().time() >= deadline:
                raise TimeoutError(f"topic {topic} does not exist (run `mailsluice topics create`)")
            await asyncio.sleep(0.5)
        return found
    finally:
        await admin.close()


def standard_topics(
    settings: KafkaSettings, pools: list[str], max_message_size: int
) -> list[TopicSpec]:
    """Every topic the pipeline needs for the given pools, with the configured partitions and
    min.insync.replicas."""
    return topic_specs(
        pools,
        max_message_size,
        queue_partitions=settings.queue_partitions,
        min_insync_replicas=settings.min_insync_replicas,
    )


def control_topics(settings: KafkaSettings) -> list[TopicSpec]:
    """The compacted topics of the shaping engine (control and warm-up ledger)."""
    return control_topic_specs(settings.min_insync_replicas)
