"""Settings of the stream processors (MAILSLUICE_STREAMS_*)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from mailsluice.config import MailsluiceSettings
from mailsluice.streams.rules import Policy


class StreamsSettings(MailsluiceSettings):
    """Stream processors: suppressions from bounces, complaints and repeated soft failures;
    daily event counters."""

    model_config = SettingsConfigDict(env_prefix="MAILSLUICE_STREAMS_", extra="ignore", frozen=True)

    app_id: str = Field(
        "mailsluice-streams",
        pattern=r"^[a-z0-9][a-z0-9.-]{0,62}$",
        description="faust app id: the consumer group and the prefix of its internal topics.",
    )
    http_host: str = Field("127.0.0.1", description="Address of /metrics, /healthz, /readyz.")
    http_port: int = Field(9105, ge=0, le=65535, description="Port of the operator endpoints.")
    soft_threshold: int = Field(
        5,
        ge=1,
        le=100,
        description="Days with a soft failure (expiration, mailbox full) that suppress an address.",
    )
    soft_window_days: int = Field(
        30, ge=1, le=365, description="Window in which those days must fall."
    )
    count_deferrals: bool = Field(
        True,
        description="Count mailbox-class deferrals (4.2.x, 4.1.x) as soft failures, not only "
        "expirations.",
    )
    counter_days: int = Field(
        35, ge=1, le=400, description="Days the daily event counters table keeps."
    )
    sweep_interval_s: float = Field(
        3600.0,
        ge=1.0,
        le=86400.0,
        description="How often each partition's stale soft-failure state is deleted.",
    )
    stall_s: float = Field(
        600.0,
        gt=0,
        description="Liveness: /healthz fails when an agent holds unprocessed events on its "
        "partitions and processes none for this long, so Kubernetes restarts a stuck processor.",
    )
    start_timeout_s: float = Field(
        60.0, gt=0, le=3600, description="How long to wait for Kafka and the events topic."
    )

    # --- campaign stats (streams/tally.py) ---
    campaign_publish_s: float = Field(
        2.0,
        ge=0.1,
        le=300.0,
        description="A campaign's stats are published to mailsluice.campaign-stats at most this "
        "often (a timer publishes the campaigns changed since).",
    )
    campaign_days: int = Field(
        90,
        ge=1,
        le=3650,
        description="A campaign with no event for this many days is forgotten (its counts and "
        "its record on mailsluice.campaign-stats go).",
    )
    campaign_state_days: int = Field(
        10,
        ge=1,
        le=365,
        description="A recipient counted as deferred whose message has no further event for "
        "this many days stops counting (its final event was lost); more than the retry period.",
    )

    # --- engagement (streams/engagement.py, streams/engaged.py) ---
    engagement_days: int = Field(
        31,
        ge=1,
        le=365,
        description="A message's unique-open and -click state is kept this long after its "
        "latest open or click (a later open counts as unique again), and the per-day engagement "
        "buckets this many days: the longest engagement window.",
    )
    engagement_publish_s: float = Field(
        5.0,
        ge=0.1,
        le=300.0,
        description="The changed per-day engagement buckets are published to "
        "mailsluice.engagement-days at most this often.",
    )

    def policy(self) -> Policy:
        return Policy(
            threshold=self.soft_threshold,
            window_days=self.soft_window_days,
            count_deferrals=self.count_deferrals,
        )
