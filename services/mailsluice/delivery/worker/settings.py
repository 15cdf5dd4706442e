"""Settings of a delivery worker (env prefix MAILSLUICE_DELIVERY_)."""

from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from mailsluice.config import MailsluiceSettings
from mailsluice.contracts.limits import DEFAULT_MAX_MESSAGE_SIZE


class DeliverySettings(MailsluiceSettings):
    """Delivery workers: pool, memory bounds, per-destination limits, retries and expiry."""

    model_config = SettingsConfigDict(
        env_prefix="MAILSLUICE_DELIVERY_", extra="ignore", frozen=True
    )

    pool: str = Field("default", pattern=r"^[a-z0-9][a-z0-9-]{0,62}$", description="Sending pool.")
    http_host: str = Field("127.0.0.1", description="Address of /metrics, /healthz, /readyz.")
    http_port: int = Field(9102, ge=0, le=65535, description="Port of the operator endpoints.")
    max_inflight: int = Field(
        1000,
        ge=1,
        le=1_000_000,
        description="Messages held in memory per worker (queued or sending); partitions pause "
        "when full.",
    )
    max_message_size: int = Field(
        DEFAULT_MAX_MESSAGE_SIZE,
        ge=1024,
        description="Largest message the worker will produce (bytes).",
    )
    dest_max_concurrency: int = Field(
        10, ge=1, le=1000, description="Default concurrent sends per destination."
    )
    outcome_depth: int = Field(
        3,
        ge=1,
        le=16,
        description="Messages per send slot whose outcome records may still await Kafka's "
        "acknowledgement: past 1 a connection starts its next message meanwhile. A crash "
        "repeats at most this many sends per slot.",
    )
    dest_max_rate: float = Field(
        100.0, gt=0, description="Default messages per second per destination (GCRA)."
    )
    dest_burst: int = Field(
        10, ge=1, le=100000, description="Messages a destination may receive back to back."
    )
    retry_base_s: float = Field(300.0, gt=0, description="First retry delay (seconds).")
    retry_factor: float = Field(2.0, ge=1.0, le=10.0, description="Retry delay growth per attempt.")
    retry_max_s: float = Field(4000.0, gt=0, description="Largest retry delay (seconds).")
    retry_jitter: float = Field(
        0.1, ge=0.0, le=0.5, description="Retry delay jitter as a fraction (0.1 is +/-10%)."
    )
    expiry_s: float = Field(
        259200.0, gt=0, description="Give up (expire and bounce) this long after reception."
    )
    short_horizon_s: float = Field(
        5.0,
        ge=0.0,
        description="Longest a message waits in memory for a throttled destination before it "
        "moves to a delay topic.",
    )
    stall_s: float = Field(
        900.0,
        gt=0,
        description="Liveness: /healthz fails when messages are held this long with none "
        "finishing (longer than any SMTP timeout), so Kubernetes restarts a stuck worker.",
    )
    dedup_size: int = Field(
        100_000,
        ge=0,
        description="Delivered (message key or queue id, recipient) pairs remembered for dedup.",
    )
    dedup_warmup_s: float = Field(
        300.0,
        ge=0.0,
        description="On taking over partitions, read back this many seconds of delivery events "
        "so repeated records skip delivered recipients (0: off).",
    )
    dedup_warmup_budget_s: float = Field(
        15.0, gt=0, description="Longest the dedup warm-up may delay the start of fetching."
    )
    bounces_enabled: bool = Field(
        True, description="Send a DSN bounce message to the envelope sender on failure."
    )
    reporting_mta: str = Field(
        "localhost", description="Host name named as Reporting-MTA in bounce messages."
    )
    drain_timeout_s: float = Field(
        25.0, ge=0.0, description="On SIGTERM, how long in-flight sends may take to finish."
    )
    commit_interval_s: float = Field(
        1.0, gt=0, le=60, description="How often finished offsets are committed."
    )
    retry_mover: bool = Field(True, description="Run the retry mover inside the delivery process.")

    @model_validator(mode="after")
    def _check_schedule(self) -> DeliverySettings:
        if self.retry_max_s < self.retry_base_s:
            raise ValueError("retry_max_s must be >= retry_base_s")
        return self
