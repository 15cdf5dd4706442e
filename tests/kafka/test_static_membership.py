"""Static group membership (MAILSLUICE_KAFKA_GROUP_INSTANCE_ID) against the real broker: a member
that dies and comes back under the same instance id gets its partitions back without a
rebalance, so the other member keeps working. With dynamic membership the group waited for the
dead member's session to time out (about 8 s in the fault run) with every partition stopped."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from mailsluice.contracts.topics import TopicSpec
from mailsluice.kafka.admin import ensure_topics
from mailsluice.kafka.clients import make_consumer
from mailsluice.kafka.settings import KafkaSettings

WITHIN_S = 30.0  # bound on a hang, not a synchronisation


class _Seen(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self) -> None:
        self.assigned = asyncio.Event()
        self.revocations = 0

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        self.revocations += 1

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        if assigned:
            self.assigned.set()


async def _member(
    ks: KafkaSettings, topic: str, group: str, name: str
) -> tuple[AIOKafkaConsumer, _Seen]:
    seen = _Seen()
    consumer = make_consumer(
        ks.model_copy(update={"group_instance_id": name}),
        group_id=group,
        client_id=f"test-static-{name}",
    )
    consumer.subscribe([topic], listener=seen)
    await consumer.start()
    return consumer, seen


async def _assigned(consumer: AIOKafkaConsumer, seen: _Seen) -> set[TopicPartition]:
    """Poll until the member holds partitions (a consumer joins its group while it fetches)."""

    async def poll() -> None:
        while not seen.assigned.is_set():
            await consumer.getmany(timeout_ms=100)

    await asyncio.wait_for(poll(), WITHIN_S)
    return set(consumer.assignment())


async def test_a_restarted_static_member_takes_its_partitions_back_without_a_rebalance(
    kafka_settings: KafkaSettings,
) -> None:
    topic = f"mailsluice.test.static-{uuid.uuid4().hex[:8]}"
    group = f"mailsluice.test.static-{uuid.uuid4().hex[:8]}"
    await ensure_topics(kafka_settings, [TopicSpec(topic, 4, {})])
    steady, steady_seen = await _member(kafka_settings, topic, group, "steady")
    await _assigned(steady, steady_seen)
    crashing, crashing_seen = await _member(kafka_settings, topic, group, "crashing")
    restarted = None
    try:
        theirs = await _assigned(crashing, crashing_seen)
        await asyncio.wait_for(_wait_for_share(steady, theirs), WITHIN_S)
        ours = set(steady.assignment())
        revocations = steady_seen.revocations
        # a static member does not leave its group when it stops: from the group's side this is
        # a crash, and its session is still open when it comes back
        await crashing.stop()
        restarted, restarted_seen = await _member(kafka_settings, topic, group, "crashing")
        assert await _assigned(restarted, restarted_seen) == theirs
        # a rebalance would have made this generation's commit fail
        await asyncio.wait_for(steady.commit(), WITHIN_S)
        assert steady_seen.revocations == revocations
        assert set(steady.assignment()) == ours
    finally:
        for consumer in (steady, crashing, restarted):
            if consumer is not None:
                await consumer.stop()


async def _wait_for_share(consumer: AIOKafkaConsumer, theirs: set[TopicPartition]) -> None:
    """Until the first member has given up the partitions the second one got."""
    while set(consumer.assignment()) & theirs:
        await consumer.getmany(timeout_ms=100)
