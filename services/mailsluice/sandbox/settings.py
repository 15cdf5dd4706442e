"""Settings of the sandbox MX."""

from __future__ import annotations

import json

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from mailsluice.config import MailsluiceSettings
from mailsluice.sandbox.chaos import ChaosError, Triggers


class SandboxSettings(MailsluiceSettings):
    """The local sandbox MX that captures delivered mail (`mailsluice sandbox`)."""

    model_config = SettingsConfigDict(env_prefix="MAILSLUICE_SANDBOX_", extra="ignore", frozen=True)

    smtp_host: str = Field("127.0.0.1", description="Address the sandbox SMTP server listens on.")
    smtp_port: int = Field(1025, ge=0, lt=65536, description="SMTP port (0: any free port).")
    http_host: str = Field("127.0.0.1", description="Address of the HTTP API (Mailpit shape).")
    http_port: int = Field(8025, ge=0, lt=65536, description="HTTP API port (0: any free port).")
    max_messages: int = Field(
        10000, ge=1, le=1_000_000, description="Messages kept in memory; the oldest go first."
    )
    max_message_size: int = Field(
        50 * 1024 * 1024, ge=1024, description="Largest message accepted, in bytes."
    )
    hostname: str = Field("sandbox.mailsluice.local", description="Name in the SMTP greeting.")
    chaos_triggers: str = Field(
        "",
        description=(
            "Scripted failures at start, as the JSON body of PUT /api/v1/chaos: Mailpit's "
            '`Sender`/`Recipient` triggers and `Rules` such as `[{"Stage": "rcpt", '
            '"Pattern": "*@slow.test", "ErrorCode": 421, "Probability": 50}]` (empty: none).'
        ),
    )
    chaos_seed: int | None = Field(
        None, description="Seed of the chaos dice, for repeatable runs (empty: random)."
    )

    @field_validator("chaos_triggers")
    @classmethod
    def _chaos(cls, value: str) -> str:
        if value.strip():
            try:
                Triggers.parse(json.loads(value))
            except (ValueError, ChaosError) as exc:  # JSONDecodeError is a ValueError
                raise ValueError(f"bad chaos triggers: {exc}") from None
        return value
