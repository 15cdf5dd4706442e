"""Settings of the HTTP API service (MAILSLUICE_API_*)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from mailsluice.config import MailsluiceSettings
from mailsluice.contracts.limits import DEFAULT_MAX_MESSAGE_SIZE

KiB = 1024
MiB = 1024 * KiB


class ApiSettings(MailsluiceSettings):
    """The HTTP API (`mailsluice api`): its ports, how long it waits for Kafka, and the limits
    of one request and of one recipient's rendering."""

    model_config = SettingsConfigDict(env_prefix="MAILSLUICE_API_", extra="ignore", frozen=True)

    listen_host: str = Field("0.0.0.0", description="Address of the public API.")
    listen_port: int = Field(8081, ge=0, le=65535, description="Port of the public API.")
    http_host: str = Field("127.0.0.1", description="Address of /metrics, /healthz, /readyz.")
    http_port: int = Field(9107, ge=0, le=65535, description="Port of the operator endpoints.")
    publish_timeout_s: float = Field(
        15.0,
        gt=0,
        le=300,
        description="Longest wait for Kafka's acknowledgement of a request's records before "
        "answering 503.",
    )
    max_body_bytes: int = Field(
        32 * MiB,
        ge=64 * KiB,
        le=256 * MiB,
        description="Largest request body; larger gets 413 before it is parsed.",
    )
    max_message_size: int = Field(
        DEFAULT_MAX_MESSAGE_SIZE,
        ge=64 * KiB,
        le=200 * MiB,
        description="Largest message one recipient's rendering may make (bytes, as queued).",
    )
    max_attachment_bytes: int = Field(
        10 * MiB,
        ge=0,
        description="Attachments of one request together, decoded (bytes).",
    )
    max_data_bytes: int = Field(
        16 * KiB,
        ge=256,
        le=1 * MiB,
        description="A recipient's substitution data, as JSON (bytes).",
    )
    max_render_bytes: int = Field(
        2 * MiB,
        ge=1 * KiB,
        description="Output of one template part for one recipient (bytes); more refuses that "
        "recipient.",
    )
    max_render_steps: int = Field(
        100_000,
        ge=100,
        description="Loop iterations and calls one recipient's rendering may take; more "
        "refuses that recipient.",
    )
    max_render_s: float = Field(
        0.25, gt=0, le=10, description="Time one recipient's rendering may take."
    )
    rollup_file: str = Field("", description="Provider rollup TOML (empty: the packaged one).")
    policy_file: str = Field(
        "",
        description="The shaping policy the workers use (MAILSLUICE_SHAPING_POLICY_FILE): its "
        "warm-up schedules cap a campaign's ETA. Empty: the packaged one.",
    )
    start_timeout_s: float = Field(
        60.0,
        gt=0,
        description="How long start may take to read the suppression, idempotency and template "
        "topics.",
    )
