"""Settings of DKIM signing (MAILSLUICE_DKIM_*), and the signing plan they describe."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from mailsluice.config import MailsluiceSettings
from mailsluice.dkim.keys import load_keys
from mailsluice.dkim.plan import SigningPlan, load_schedule


class DkimSettings(MailsluiceSettings):
    """DKIM signing of outgoing mail by delivery workers (and `mailsluice dkim check`)."""

    model_config = SettingsConfigDict(env_prefix="MAILSLUICE_DKIM_", extra="ignore", frozen=True)

    keys_dir: str = Field(
        "",
        description="Directory of private keys named <selector>._domainkey.<domain>.pem (a "
        "Secret mount); empty: mail is sent unsigned.",
    )
    domain: str = Field(
        "",
        description="The pool's signing domain, used when the header From domain has no key; "
        "empty: such mail goes unsigned.",
    )
    schedule_file: str = Field(
        "",
        description="YAML/JSON rotation schedule (selector active_from per domain, grace_days); "
        "empty: every key signs from the start.",
    )

    @field_validator("domain")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.strip().lower().rstrip(".")

    def plan(self) -> SigningPlan | None:
        """The keys and schedule named here (None when no keys directory is set); raises
        DkimKeyError or ScheduleError for files that cannot be used."""
        if not self.keys_dir:
            return None
        schedule = load_schedule(Path(self.schedule_file)) if self.schedule_file else None
        return SigningPlan(load_keys(Path(self.keys_dir)), schedule)
