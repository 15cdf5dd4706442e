"""Unsubscribe settings (env prefix MAILSLUICE_UNSUBSCRIBE_), shared by the delivery workers
(which add the header fields), ingest (which takes the mailto address) and the unsubscribe
service (which takes the one-click POST)."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from mailsluice.config import MailsluiceSettings
from mailsluice.consent.tokens import KeyRing, Preference
from mailsluice.sealing import read_keys


class UnsubscribeSettings(MailsluiceSettings):
    """One-click unsubscribe (RFC 8058): token keys, the link and mailto address the workers
    put in List-Unsubscribe, the scope an unsubscribe suppresses in, and the unsubscribe
    service's ports."""

    model_config = SettingsConfigDict(
        env_prefix="MAILSLUICE_UNSUBSCRIBE_", extra="ignore", frozen=True
    )

    keys_dir: str = Field(
        "",
        description="Directory of token keys (a Kubernetes Secret mount): one file per key, "
        "named by its key id (a-z, 0-9, '-'), holding at least 16 bytes of secret. Every key "
        "there verifies; remove a key to retire it. Read at start.",
    )
    keys: SecretStr = Field(
        SecretStr(""),
        description="Token keys inline, `ID:SECRET,ID:SECRET` (development; keys_dir is read too).",
    )
    active_key: str = Field(
        "",
        description="Id of the key new tokens are signed with (empty: the only key). Publish a "
        "new key to every process first, then make it active.",
    )
    url: str = Field(
        "",
        description="Base of the one-click link, `https://HOST` (the unsubscribe service's "
        "public name); links are `<url>/u/<token>`. Empty: no List-Unsubscribe at all.",
    )
    mailto_domain: str = Field(
        "",
        description="Domain of the mailto address `unsubscribe+<token>@<domain>`, which ingest "
        "takes (its MX must point at ingest). Empty: no mailto in List-Unsubscribe.",
    )
    scope: Preference = Field(
        "list",
        description="Where an unsubscribe suppresses: list (the message's list, else its "
        "tenant, else its sender domain), tenant (else the sender domain), domain, or global.",
    )
    transactional: bool = Field(
        False, description="Add List-Unsubscribe to transactional-stream messages too."
    )
    listen_host: str = Field("0.0.0.0", description="Address of the public unsubscribe pages.")
    listen_port: int = Field(8080, ge=0, le=65535, description="Port of the public pages.")
    http_host: str = Field("127.0.0.1", description="Address of /metrics, /healthz, /readyz.")
    http_port: int = Field(9106, ge=0, le=65535, description="Port of the operator endpoints.")
    publish_timeout_s: float = Field(
        5.0, gt=0, description="Longest a one-click POST waits for Kafka before answering 503."
    )

    @field_validator("url")
    @classmethod
    def _https(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if value and not value.startswith("https://"):
            raise ValueError("must start with https:// (RFC 8058 one-click needs HTTPS)")
        return value

    @field_validator("mailto_domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        return value.strip().lower()

    def key_ring(self) -> KeyRing:
        """The keys from keys_dir and keys; ValueError naming what is wrong."""
        found = read_keys(self.keys.get_secret_value(), self.keys_dir)
        return KeyRing(found, self.active_key)

    @property
    def enabled(self) -> bool:
        """Whether the workers add List-Unsubscribe (a link needs a base URL and keys)."""
        return bool(self.url)
