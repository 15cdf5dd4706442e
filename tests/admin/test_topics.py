"""Topic creation: the plan (pure) and ensure_topics / `mailsluice topics` on the real broker."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from mailsluice.cli import main
from mailsluice.contracts.limits import record_limit
from mailsluice.contracts.topics import (
    API_IDEMPOTENCY_TOPIC,
    CAMPAIGN_STATS_TOPIC,
    CONTROL_TOPIC,
    ENGAGEMENT_DAYS_TOPIC,
    ENGAGEMENT_TOPIC,
    EVENTS_TOPIC,
    RETRY_TIERS,
    SUPPRESSIONS_TOPIC,
    TEMPLATES_TOPIC,
    TENANT_USAGE_TOPIC,
    WARMUP_TOPIC,
    WEBHOOK_STATUS_TOPIC,
    TopicSpec,
    queue_topic,
    retry_topic,
    webhook_topic_specs,
)
from mailsluice.kafka.admin import (
    TopicChange,
    ensure_topics,
    plan_topic_changes,
    standard_topics,
    wait_for_topics,
)
from mailsluice.kafka.settings import KafkaSettings


def unique_topic(what: str) -> str:
    return f"mailsluice.test.{what}-{uuid.uuid4().hex[:8]}"


# --- pure -------------------------------------------------------------------------------------


def test_plan_topic_changes() -> None:
    wanted = [TopicSpec("new", 3), TopicSpec("short", 6), TopicSpec("long", 2), TopicSpec("ok", 4)]
    existing = {"short": 3, "long": 5, "ok": 4, "unrelated": 9}
    assert plan_topic_changes(existing, wanted) == [
        TopicChange("new", "created", 3),
        TopicChange("short", "grown", 6),
        TopicChange("long", "shrink-refused", 5),
        TopicChange("ok", "unchanged", 4),
    ]


def test_standard_topics_cover_pools_retries_events_suppressions_and_control() -> None:
    settings = KafkaSettings(queue_partitions=7, min_insync_replicas=2)
    specs = {s.name: s for s in standard_topics(settings, ["default", "bulk"], 1_000_000)}
    expected = {
        queue_topic("default"),
        queue_topic("bulk"),
        EVENTS_TOPIC,
        SUPPRESSIONS_TOPIC,
        CONTROL_TOPIC,
        WARMUP_TOPIC,
        *(retry_topic(name) for name, _ in RETRY_TIERS),
        CAMPAIGN_STATS_TOPIC,
        ENGAGEMENT_DAYS_TOPIC,
        *(spec.name for spec in webhook_topic_specs(2)),  # webhooks
        TENANT_USAGE_TOPIC,
        API_IDEMPOTENCY_TOPIC,
        TEMPLATES_TOPIC,
        ENGAGEMENT_TOPIC,
    }
    assert set(specs) == expected
    queue = specs[queue_topic("bulk")]
    assert queue.partitions == 7
    assert queue.configs["max.message.bytes"] == str(record_limit(1_000_000))
    assert queue.configs["min.insync.replicas"] == "2"
    for compacted in (
        SUPPRESSIONS_TOPIC,
        CONTROL_TOPIC,
        WARMUP_TOPIC,
        CAMPAIGN_STATS_TOPIC,
        WEBHOOK_STATUS_TOPIC,
        ENGAGEMENT_TOPIC,
    ):
        assert specs[compacted].configs["cleanup.policy"] == "compact"
    assert specs[TENANT_USAGE_TOPIC].configs["cleanup.policy"] == "compact,delete"
    answers = specs[API_IDEMPOTENCY_TOPIC].configs
    assert (answers["cleanup.policy"], answers["retention.ms"]) == ("compact,delete", "86400000")
    assert specs[TEMPLATES_TOPIC].configs["cleanup.policy"] == "compact"
    days = specs[ENGAGEMENT_DAYS_TOPIC].configs
    assert (days["cleanup.policy"], days["retention.ms"]) == ("compact,delete", str(35 * 86400000))


# --- ensure_topics on the real broker ---------------------------------------------------------


@pytest.fixture
async def admin(kafka_settings: KafkaSettings) -> AsyncIterator[AIOKafkaAdminClient]:
    client = AIOKafkaAdminClient(**kafka_settings.client_options(), client_id="test-topics")
    await client.start()
    try:
        yield client
    finally:
        await client.close()


async def partitions(admin: AIOKafkaAdminClient, topic: str) -> int:
    (described,) = await admin.describe_topics([topic])
    assert described["error_code"] == 0, described
    return len(described["partitions"])


async def topic_configs(admin: AIOKafkaAdminClient, topic: str) -> dict[str, str]:
    responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    configs: dict[str, str] = {}
    for response in responses:
        for resource in response.resources:
            error_code, _message, _type, name, entries = resource[:5]
            assert error_code == 0 and name == topic
            for entry in entries:
                configs[entry[0]] = entry[1]
    return configs


async def test_ensure_topics_creates_with_partitions_and_configs(
    kafka_settings: KafkaSettings, admin: AIOKafkaAdminClient
) -> None:
    compacted, big = unique_topic("compact"), unique_topic("big")
    wanted = [
        TopicSpec(compacted, 3, {"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"}),
        TopicSpec(big, 2, {"max.message.bytes": str(record_limit(5_000_000))}),
    ]
    changes = await ensure_topics(kafka_settings, wanted)
    assert changes == [TopicChange(compacted, "created", 3), TopicChange(big, "created", 2)]
    # A new topic reaches the metadata a moment after CreateTopics returns.
    await asyncio.wait_for(wait_for_topics(kafka_settings, {compacted: 3, big: 2}), 30)
    assert await partitions(admin, compacted) == 3
    assert await partitions(admin, big) == 2
    assert (await topic_configs(admin, compacted))["cleanup.policy"] == "compact"
    assert (await topic_configs(admin, big))["max.message.bytes"] == str(record_limit(5_000_000))

    # Idempotent: the same request again changes nothing.
    again = await ensure_topics(kafka_settings, wanted)
    assert [c.action for c in again] == ["unchanged", "unchanged"]


async def test_ensure_topics_grows_but_never_shrinks(
    kafka_settings: KafkaSettings, admin: AIOKafkaAdminClient
) -> None:
    topic = unique_topic("grow")
    await ensure_topics(kafka_settings, [TopicSpec(topic, 2)])
    await asyncio.wait_for(wait_for_topics(kafka_settings, {topic: 2}), 30)
    grown = await ensure_topics(kafka_settings, [TopicSpec(topic, 5)])
    assert grown == [TopicChange(topic, "grown", 5)]
    await asyncio.wait_for(wait_for_topics(kafka_settings, {topic: 5}), 30)
    assert await partitions(admin, topic) == 5
    refused = await ensure_topics(kafka_settings, [TopicSpec(topic, 1)])
    assert refused == [TopicChange(topic, "shrink-refused", 5)]
    assert await partitions(admin, topic) == 5


async def test_standard_topics_created_on_the_broker(
    kafka_settings: KafkaSettings, admin: AIOKafkaAdminClient
) -> None:
    # A pool of our own and one queue partition, so nothing another test uses is grown.
    pool = f"t{uuid.uuid4().hex[:8]}"
    own = kafka_settings.model_copy(update={"queue_partitions": 1})
    await ensure_topics(own, standard_topics(own, [pool], 2_000_000))
    queue = queue_topic(pool)
    await asyncio.wait_for(wait_for_topics(kafka_settings, {queue: 1}), 30)
    assert await partitions(admin, queue) == 1
    assert (await topic_configs(admin, queue))["max.message.bytes"] == str(record_limit(2_000_000))
    suppressions = await topic_configs(admin, SUPPRESSIONS_TOPIC)
    assert suppressions["cleanup.policy"] == "compact"


# --- `mailsluice topics` ----------------------------------------------------------------------


@pytest.fixture
def cli_env(kafka, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILSLUICE_KAFKA_BOOTSTRAP", kafka.bootstrap)
    # One partition per queue: existing queue topics are never grown by this test.
    monkeypatch.setenv("MAILSLUICE_KAFKA_QUEUE_PARTITIONS", "1")


def test_cli_topics_create_and_list(cli_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    pool_a, pool_b = f"a{uuid.uuid4().hex[:8]}", f"b{uuid.uuid4().hex[:8]}"
    args = ["topics", "create", "--pool", pool_a, "--pool", pool_b]
    assert main([*args, "--max-message-size", "1000000"]) == 0
    lines = set(capsys.readouterr().out.splitlines())
    assert f"{queue_topic(pool_a)}\tcreated\t1 partitions" in lines
    assert f"{queue_topic(pool_b)}\tcreated\t1 partitions" in lines
    assert any(line.startswith(SUPPRESSIONS_TOPIC + "\t") for line in lines)

    assert main([*args]) == 0
    out = capsys.readouterr().out
    assert f"{queue_topic(pool_a)}\tunchanged\t1 partitions" in out.splitlines()

    assert main(["topics", "list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert f"{queue_topic(pool_b)}\t1 partitions" in listed


def test_cli_topics_create_reports_shrink_refused(
    cli_env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pool = f"s{uuid.uuid4().hex[:8]}"
    queue = queue_topic(pool)
    monkeypatch.setenv("MAILSLUICE_KAFKA_QUEUE_PARTITIONS", "2")
    assert main(["topics", "create", "--pool", pool]) == 0
    assert f"{queue}\tcreated\t2 partitions" in capsys.readouterr().out.splitlines()
    # Fewer partitions than the topic has: kept as is and reported, not an error.
    monkeypatch.setenv("MAILSLUICE_KAFKA_QUEUE_PARTITIONS", "1")
    assert main(["topics", "create", "--pool", pool]) == 0
    captured = capsys.readouterr()
    assert f"{queue}\tshrink-refused\t2 partitions" in captured.out.splitlines()
    assert "cannot shrink" in captured.err and queue in captured.err


@pytest.mark.parametrize("size", ["0", "-5", "big"])
def test_cli_topics_rejects_bad_size(size: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["topics", "create", "--max-message-size", size])
    assert exc.value.code == 2
    assert "--max-message-size" in capsys.readouterr().err
