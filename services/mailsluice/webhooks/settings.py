"""Settings of the webhook sender (MAILSLUICE_WEBHOOKS_*)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from mailsluice.config import MailsluiceSettings
from mailsluice.webhooks.schedule import DEFAULT_DELAYS_S, DEFAULT_RETRY_FOR_S, RetrySchedule
from mailsluice.webhooks.ssrf import Network, parse_networks


class WebhooksSettings(MailsluiceSettings):
    """The webhook sender (`mailsluice webhooks`): batching, retries, pausing, SSRF."""

    model_config = SettingsConfigDict(
        env_prefix="MAILSLUICE_WEBHOOKS_", extra="ignore", frozen=True
    )

    http_host: str = Field("127.0.0.1", description="Address of /metrics, /healthz, /readyz.")
    http_port: int = Field(9108, ge=0, le=65535, description="Port of the operator endpoints.")
    first_start: Literal["latest", "earliest"] = Field(
        "latest",
        description="Where the events dispatcher begins when its consumer group has no "
        "committed offsets yet (the first deploy): latest sends only events from then on; "
        "earliest also every event still on mailsluice.events (up to its 7-day retention). "
        "Later starts always go on from the committed offsets.",
    )
    batch_max_events: int = Field(100, ge=1, le=1000, description="Events in one POST at most.")
    batch_max_bytes: int = Field(
        256 * 1024,
        ge=4096,
        le=512 * 1024,
        description="Body bytes of one POST at most (a batch also waits on a delay topic whole).",
    )
    batch_max_wait_ms: int = Field(
        1000,
        ge=0,
        le=60000,
        description="How long the first event of a batch waits for more before it is sent.",
    )
    request_timeout_s: float = Field(
        15.0, gt=0, le=120, description="One POST's time limit (connect, send, answer)."
    )
    max_in_flight: int = Field(
        64, ge=1, le=10000, description="POSTs under way at once, all endpoints together."
    )
    endpoint_in_flight: int = Field(
        4,
        ge=1,
        le=100,
        description="POSTs under way at once to one endpoint; one (a probe) while it fails, "
        "its other batches going back to their delay tier untried.",
    )
    max_buffered_events: int = Field(
        10000,
        ge=1,
        description="Events waiting for their batch's POST in all; the events consumer pauses "
        "at this many.",
    )
    retry_delays_s: str = Field(
        ",".join(f"{d:g}" for d in DEFAULT_DELAYS_S),
        description="Seconds before each retry of a failed batch, comma-separated; the last "
        "repeats. Each is stretched by up to 10 % at random.",
    )
    retry_for_s: float = Field(
        DEFAULT_RETRY_FOR_S,
        gt=0,
        description="A failed batch is retried until this long after its first attempt, then "
        "dead-lettered (mailsluice.webhooks.dead).",
    )
    pause_after_s: float = Field(
        5 * 24 * 3600.0,
        gt=0,
        description="An endpoint failing without a success for this long is paused: its "
        "batches go to the dead-letter topic unsent until `mailsluice webhooks resume`.",
    )
    allow_networks: str = Field(
        "",
        description="Comma-separated CIDRs webhooks may be sent to although they are not "
        "globally routable (loopback, private, link-local...). Empty: none (SSRF protection).",
    )
    max_held: int = Field(
        500,
        ge=1,
        le=1_000_000,
        description="Failed batches held in memory per delay-tier partition until due; the "
        "retry loop stops fetching at this many and goes on at half.",
    )
    max_held_bytes: int = Field(
        128 * 1024 * 1024,
        ge=1024 * 1024,
        description="Bytes of failed batches held in memory in all; the retry loop stops "
        "fetching at this many and goes on at half.",
    )
    stall_s: float = Field(
        600.0,
        gt=0,
        description="Liveness: /healthz fails when events or due batches wait and none is "
        "finished for this long.",
    )

    @field_validator("allow_networks")
    @classmethod
    def _networks(cls, value: str) -> str:
        parse_networks(value)
        return value

    @field_validator("retry_delays_s")
    @classmethod
    def _delays(cls, value: str) -> str:
        RetrySchedule(_floats(value))
        return value

    def networks(self) -> list[Network]:
        return parse_networks(self.allow_networks)

    def schedule(self) -> RetrySchedule:
        return RetrySchedule(_floats(self.retry_delays_s), self.retry_for_s)


def _floats(value: str) -> tuple[float, ...]:
    return tuple(float(item) for item in value.split(",") if item.strip())
