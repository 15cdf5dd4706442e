"""Settings of the unengaged-address policy (MAILSLUICE_HYGIENE_*): the default every tenant's
`hygiene` block overrides, read by the stream processors (which suppress), and by the API and
`mailsluice engagement report` (which show what they would suppress)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from mailsluice.config import MailsluiceSettings
from mailsluice.engagement.policy import HygienePolicy


class HygieneSettings(MailsluiceSettings):
    """Engagement hygiene: addresses that receive mail and never open or click it are
    suppressed as `unengaged` in their tenant's scope."""

    model_config = SettingsConfigDict(env_prefix="MAILSLUICE_HYGIENE_", extra="ignore", frozen=True)

    enabled: bool = Field(
        False,
        description="Suppress unengaged addresses (reason `unengaged`, in the tenant's scope), "
        "for tenants whose `hygiene` block does not say. Off by default: look at "
        "`mailsluice engagement report --tenant T` first.",
    )
    deliveries: int = Field(
        10,
        ge=1,
        le=1000,
        description="Deliveries without a person's open or click that make an address "
        "unengaged, ...",
    )
    days: int = Field(
        90,
        ge=1,
        le=3650,
        description="... when they span at least this many days since its last open or click "
        "(or its first delivery).",
    )

    forget_days: int = Field(
        400,
        ge=30,
        le=3650,
        description="An address with no delivery, open or click for this many days is forgotten "
        "(its engagement record goes; an unengaged suppression stays).",
    )

    def policy(self) -> HygienePolicy:
        return HygienePolicy(enabled=self.enabled, deliveries=self.deliveries, days=self.days)
