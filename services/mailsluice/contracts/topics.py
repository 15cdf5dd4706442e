"""Topics: names, the retry delay tiers, consumer groups, and the specs of every topic the
project creates (partitions and configs; replication comes from the Kafka settings)."""

from __future__ import annotations

from dataclasses import dataclass, field

from mailsluice.contracts.limits import record_limit

TOPIC_PREFIX = "mailsluice"
DEFAULT_POOL = "default"

# Keyed by queue id; one closed set of event types (contracts/events.py).
EVENTS_TOPIC = f"{TOPIC_PREFIX}.events"
# Compacted, keyed by address (contracts/suppressions.py).
SUPPRESSIONS_TOPIC = f"{TOPIC_PREFIX}.suppressions"
# Compacted: destination commands and worker status (contracts/control.py).
CONTROL_TOPIC = f"{TOPIC_PREFIX}.control"
# Compacted: the warm-up ledger (contracts/warmup.py).
WARMUP_TOPIC = f"{TOPIC_PREFIX}.warmup"

# --- campaign stats (streams/campaigns.py) ---
# Compacted, keyed "tenant|campaign": each campaign's latest counts (contracts/campaign_stats.py).
CAMPAIGN_STATS_TOPIC = f"{TOPIC_PREFIX}.campaign-stats"
CAMPAIGN_STATS_PARTITIONS = 3
# --- end campaign stats ---

# --- engagement (streams/engaged.py) ---
# Compacted and deleted after ENGAGEMENT_RETENTION_MS, keyed "tenant|provider|day|partition":
# per-day deliveries, unique opens and clicks (contracts/engagement_stats.py).
ENGAGEMENT_DAYS_TOPIC = f"{TOPIC_PREFIX}.engagement-days"
ENGAGEMENT_DAYS_PARTITIONS = 3
ENGAGEMENT_RETENTION_MS = 35 * 24 * 3600 * 1000
# --- end engagement ---

# Delay tiers for retries: (name, delay in seconds). A retry goes to the largest tier not
# longer than the wanted delay, so a message never comes back later than asked by more than
# the mover's poll interval.
RETRY_TIERS: tuple[tuple[str, int], ...] = (
    ("1m", 60),
    ("10m", 600),
    ("1h", 3600),
)

EVENTS_PARTITIONS = 6
SUPPRESSIONS_PARTITIONS = 3
EVENTS_RETENTION_MS = 7 * 24 * 3600 * 1000
# A compacted record stays uncompacted this long, so a reader that just started sees it.
COMPACTION_LAG_MS = 60_000


def queue_topic(pool: str) -> str:
    """A pool's queue; key: routing key."""
    return f"{TOPIC_PREFIX}.queue.{pool}"


def retry_topic(tier: str) -> str:
    """A retry delay tier; key: routing key."""
    return f"{TOPIC_PREFIX}.retry.{tier}"


def consumer_group(pool: str) -> str:
    """The consumer group of a pool's delivery workers."""
    return f"{TOPIC_PREFIX}.delivery.{pool}"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    configs: dict[str, str] = field(default_factory=dict)


def topic_specs(
    pools: list[str], max_message_size: int, *, queue_partitions: int, min_insync_replicas: int
) -> list[TopicSpec]:
    """Every topic the pipeline needs for the given pools."""
    isr = {"min.insync.replicas": str(min_insync_replicas)}
    big = _message_configs(max_message_size, min_insync_replicas)
    specs = [
        queue_topic_spec(p, queue_partitions, max_message_size, min_insync_replicas) for p in pools
    ]
    specs += [TopicSpec(retry_topic(name), queue_partitions, big) for name, _ in RETRY_TIERS]
    specs.append(
        TopicSpec(
            EVENTS_TOPIC, EVENTS_PARTITIONS, {**isr, "retention.ms": str(EVENTS_RETENTION_MS)}
        )
    )
    specs.append(TopicSpec(SUPPRESSIONS_TOPIC, SUPPRESSIONS_PARTITIONS, _compacted(isr)))
    specs += webhook_topic_specs(min_insync_replicas)
    specs += tenant_usage_topic_specs(min_insync_replicas)
    specs += api_topic_specs(min_insync_replicas)
    specs += engagement_topic_specs(min_insync_replicas)
    return (
        specs + control_topic_specs(min_insync_replicas) + campaign_topic_specs(min_insync_replicas)
    )


def queue_topic_spec(
    pool: str, partitions: int, max_message_size: int, min_insync_replicas: int
) -> TopicSpec:
    """A pool's queue topic: records up to the largest message, on min.insync.replicas."""
    return TopicSpec(
        queue_topic(pool), partitions, _message_configs(max_message_size, min_insync_replicas)
    )


def _message_configs(max_message_size: int, min_insync_replicas: int) -> dict[str, str]:
    return {
        "max.message.bytes": str(record_limit(max_message_size)),
        "min.insync.replicas": str(min_insync_replicas),
    }


def control_topic_specs(min_insync_replicas: int) -> list[TopicSpec]:
    """The compacted topics of the shaping engine (control and warm-up ledger)."""
    compact = _compacted({"min.insync.replicas": str(min_insync_replicas)})
    return [TopicSpec(CONTROL_TOPIC, 1, compact), TopicSpec(WARMUP_TOPIC, 3, compact)]


def _compacted(configs: dict[str, str]) -> dict[str, str]:
    return {
        "cleanup.policy": "compact",
        **configs,
        "min.compaction.lag.ms": str(COMPACTION_LAG_MS),
    }


# --- tenants -------------------------------------------------------------------------------------

# Compacted, keyed "<replica>|<tenant>|<window>|<start>": the recipients each process accepted
# for a tenant in a quota window (contracts/usage.py), so every process holds quotas for all.
# Records of ended windows matter for a day at most: deleted after two.
TENANT_USAGE_TOPIC = f"{TOPIC_PREFIX}.tenant-usage"
TENANT_USAGE_PARTITIONS = 3
TENANT_USAGE_RETENTION_MS = 2 * 24 * 3600 * 1000


def tenant_usage_topic_specs(min_insync_replicas: int) -> list[TopicSpec]:
    """The tenant usage topic (created by every process that shares quota counts)."""
    configs = _compacted({"min.insync.replicas": str(min_insync_replicas)})
    configs["cleanup.policy"] = "compact,delete"
    configs["retention.ms"] = str(TENANT_USAGE_RETENTION_MS)
    return [TopicSpec(TENANT_USAGE_TOPIC, TENANT_USAGE_PARTITIONS, configs)]


def campaign_topic_specs(min_insync_replicas: int) -> list[TopicSpec]:
    """The compacted topics of the campaign stats and engagement the stream processors
    publish."""
    compact = _compacted({"min.insync.replicas": str(min_insync_replicas)})
    # a day's bucket older than the longest window is of no use: deleted, tombstone or not
    days = {**compact, "cleanup.policy": "compact,delete"}
    days["retention.ms"] = str(ENGAGEMENT_RETENTION_MS)
    return [
        TopicSpec(CAMPAIGN_STATS_TOPIC, CAMPAIGN_STATS_PARTITIONS, compact),
        TopicSpec(ENGAGEMENT_DAYS_TOPIC, ENGAGEMENT_DAYS_PARTITIONS, days),
    ]


# --- webhooks: the `mailsluice webhooks` stage (contracts/webhook_records.py) ----------------

# The consumer groups of the events dispatcher and of the retry loop.
WEBHOOKS_GROUP = f"{TOPIC_PREFIX}.webhooks"
WEBHOOKS_RETRY_GROUP = f"{TOPIC_PREFIX}.webhooks.retry"
# Batches that failed every attempt (or were refused); keyed tenant|endpoint; kept 30 days.
WEBHOOK_DEAD_TOPIC = f"{TOPIC_PREFIX}.webhooks.dead"
# Compacted, keyed tenant|endpoint: each endpoint's state (active, failing, paused).
WEBHOOK_STATUS_TOPIC = f"{TOPIC_PREFIX}.webhooks.status"
# Delay tiers of failed batches (name, seconds): a batch waits on the largest tier not longer
# than its next delay, and its record's not_before says when it is due.
WEBHOOK_RETRY_TIERS: tuple[tuple[str, int], ...] = (
    ("30s", 30),
    ("2m", 120),
    ("10m", 600),
    ("1h", 3600),
    ("6h", 21600),
)
WEBHOOK_PARTITIONS = 6
WEBHOOK_DEAD_RETENTION_MS = 30 * 24 * 3600 * 1000
# Largest batch record: twice the largest body (webhooks/settings.py batch_max_bytes) and more.
WEBHOOK_RECORD_BYTES = 2 * 1024 * 1024


def webhook_retry_topic(tier: str) -> str:
    """A webhook delay tier; key: tenant|endpoint."""
    return f"{TOPIC_PREFIX}.webhooks.retry.{tier}"


def webhook_topic_specs(min_insync_replicas: int) -> list[TopicSpec]:
    """The webhook stage's delay tiers, dead letters and endpoint status."""
    isr = {"min.insync.replicas": str(min_insync_replicas)}
    # a batch's body travels as a JSON string inside its record: room for its escaping
    batches = {**isr, "max.message.bytes": str(WEBHOOK_RECORD_BYTES)}
    specs = [
        TopicSpec(webhook_retry_topic(n), WEBHOOK_PARTITIONS, batches)
        for n, _ in WEBHOOK_RETRY_TIERS
    ]
    dead = {**batches, "retention.ms": str(WEBHOOK_DEAD_RETENTION_MS)}
    specs.append(TopicSpec(WEBHOOK_DEAD_TOPIC, 3, dead))
    specs.append(TopicSpec(WEBHOOK_STATUS_TOPIC, 3, _compacted(isr)))
    return specs


# --- the HTTP API (api/) ------------------------------------------------------------------------

# Compacted and deleted after a day: the first answer per tenant and Idempotency-Key
# (contracts/idempotency.py), read back by every API replica at start.
API_IDEMPOTENCY_TOPIC = f"{TOPIC_PREFIX}.api-idempotency"
# Compacted: the tenants' stored templates, one record per version (contracts/templates.py).
TEMPLATES_TOPIC = f"{TOPIC_PREFIX}.templates"
API_IDEMPOTENCY_PARTITIONS = 3
IDEMPOTENCY_RETENTION_MS = 24 * 3600 * 1000


def api_topic_specs(min_insync_replicas: int) -> list[TopicSpec]:
    """The HTTP API's own topics: idempotency answers and stored templates."""
    isr = {"min.insync.replicas": str(min_insync_replicas)}
    answers = {
        **_compacted(isr),
        "cleanup.policy": "compact,delete",
        "retention.ms": str(IDEMPOTENCY_RETENTION_MS),
        "delete.retention.ms": str(IDEMPOTENCY_RETENTION_MS),
    }
    return [
        TopicSpec(API_IDEMPOTENCY_TOPIC, API_IDEMPOTENCY_PARTITIONS, answers),
        TopicSpec(TEMPLATES_TOPIC, 1, _compacted(isr)),
    ]


# --- engagement (streams/hygiene.py) -------------------------------------------------------------

# Compacted, keyed "tenant|address": an address's engagement with a tenant's mail
# (contracts/engagement.py), read by ingest and the API for the grade of a message.
ENGAGEMENT_TOPIC = f"{TOPIC_PREFIX}.engagement"
ENGAGEMENT_PARTITIONS = 6


def engagement_topic_specs(min_insync_replicas: int) -> list[TopicSpec]:
    """The compacted topic of the addresses' engagement the stream processors publish."""
    compact = _compacted({"min.insync.replicas": str(min_insync_replicas)})
    return [TopicSpec(ENGAGEMENT_TOPIC, ENGAGEMENT_PARTITIONS, compact)]
