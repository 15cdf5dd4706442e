"""Settings of the retry mover (MAILSLUICE_RETRY_MOVER_*)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from mailsluice.config import MailsluiceSettings


class RetryMoverSettings(MailsluiceSettings):
    """The retry mover (`mailsluice retry-mover`, or inside a delivery process)."""

    model_config = SettingsConfigDict(
        env_prefix="MAILSLUICE_RETRY_MOVER_", extra="ignore", frozen=True
    )

    http_host: str = Field("127.0.0.1", description="Address of /metrics, /healthz, /readyz.")
    http_port: int = Field(
        9104, ge=0, le=65535, description="Port of the operator endpoints (standalone mover)."
    )
    max_held: int = Field(
        1000,
        ge=1,
        le=1_000_000,
        description="Retry records held in memory per tier partition until due; the partition "
        "pauses at this many and resumes at half.",
    )
    max_held_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1024 * 1024,
        description="Bytes of retry records held in memory in all; every partition pauses at "
        "this many and resumes at half.",
    )
    follow_control: bool = Field(
        True,
        description="Follow the control topic, so `destinations retry-now` releases held "
        "retries of that destination at once.",
    )
    status_interval_s: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="How often the counts of held records per destination go to the control "
        "topic (and at once after a command), for `mailsluice destinations list`.",
    )
    stall_s: float = Field(
        600.0,
        gt=0,
        description="Liveness: /healthz fails when a record is overdue and none is moved for "
        "this long, so Kubernetes restarts a stuck mover.",
    )
