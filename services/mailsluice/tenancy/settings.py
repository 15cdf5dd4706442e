"""Tenancy settings (env prefix MAILSLUICE_TENANTS_), read by every process that serves
tenants: the HTTP API, ingest, the webhook sender."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from mailsluice.config import MailsluiceSettings


class TenancySettings(MailsluiceSettings):
    """Where the tenants are defined (tenancy/model.py describes the file)."""

    model_config = SettingsConfigDict(env_prefix="MAILSLUICE_TENANTS_", extra="ignore", frozen=True)

    file: str = Field(
        "",
        description="The tenants file (YAML; a Kubernetes Secret mount, which the operator "
        "renders from SendingTenant resources). Re-read when it changes. Empty: no tenants.",
    )
