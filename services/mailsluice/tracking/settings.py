"""Tracking settings (env prefix MAILSLUICE_TRACKING_), shared by the delivery workers (which
rewrite messages and mint tokens) and the tracker service (which verifies them and records
opens and clicks)."""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from mailsluice.config import MailsluiceSettings
from mailsluice.sealing import read_keys
from mailsluice.tracking.tokens import TrackingKeys

Choice = Literal["off", "opens", "clicks", "all"]


class TrackingSettings(MailsluiceSettings):
    """Open and click tracking: token keys, the tracker's public host, what a pool tracks when
    a message does not say, and the tracker service's ports and machine detection."""

    model_config = SettingsConfigDict(
        env_prefix="MAILSLUICE_TRACKING_", extra="ignore", frozen=True
    )

    keys_dir: str = Field(
        "",
        description="Directory of tracking token keys (a Kubernetes Secret mount): one file per "
        "key, named by its key id (a-z, 0-9, '-'), at least 16 bytes of secret. Read at start.",
    )
    keys: SecretStr = Field(
        SecretStr(""),
        description="Token keys inline, `ID:SECRET,ID:SECRET` (development; keys_dir is read too).",
    )
    active_key: str = Field(
        "", description="Id of the key new tokens are signed with (empty: the only key)."
    )
    url: str = Field(
        "",
        description="Base of the pixel and click links, `https://HOST` (the tracker service's "
        "public host name, ideally one per sender domain's brand); links are `<url>/o/<token>` "
        "and `<url>/c/<token>`. Empty: no message is tracked.",
    )
    default: Choice = Field(
        "off",
        description="What this pool tracks when neither the message, its campaign nor its "
        "tenant says: off, opens, clicks or all.",
    )
    transactional: bool = Field(
        False, description="Track transactional-stream messages too (when they ask for it)."
    )
    listen_host: str = Field("0.0.0.0", description="Address of the public tracker endpoints.")
    listen_port: int = Field(8082, ge=0, le=65535, description="Port of the tracker endpoints.")
    http_host: str = Field("127.0.0.1", description="Address of /metrics, /healthz, /readyz.")
    http_port: int = Field(9109, ge=0, le=65535, description="Port of the operator endpoints.")
    too_soon_s: float = Field(
        10.0,
        ge=0,
        description="A click (or open) this soon after the message was sent is a machine's: "
        "security scanners follow links on delivery.",
    )
    machines_file: str = Field(
        "",
        description="YAML file of privacy-proxy ranges and scanner user agents (empty: the "
        "list shipped with Mailsluice).",
    )

    # --- the tracker service (mailsluice tracker) ---
    trusted_proxies: str = Field(
        "",
        description="Comma-separated addresses or CIDRs of proxies in front of the tracker "
        "(an Ingress controller, a load balancer) whose X-Forwarded-For is believed; empty: "
        "the client address is the peer's.",
    )
    event_buffer: int = Field(
        10_000,
        ge=1,
        description="Open and click events the tracker holds while Kafka does not take them; "
        "past that, new ones are dropped (and counted): the answers never wait for Kafka.",
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, value: str) -> str:
        for part in filter(None, (p.strip() for p in value.split(","))):
            ipaddress.ip_network(part, strict=False)  # ValueError names the bad one
        return value

    @field_validator("url")
    @classmethod
    def _web(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if value and not value.startswith(("https://", "http://")):
            raise ValueError("must start with https:// (or http:// for a local test)")
        return value

    def key_ring(self) -> TrackingKeys:
        """The keys from keys_dir and keys; ValueError naming what is wrong."""
        return TrackingKeys(read_keys(self.keys.get_secret_value(), self.keys_dir), self.active_key)

    @property
    def enabled(self) -> bool:
        """Whether a worker may track at all (a link needs a base URL and keys)."""
        return bool(self.url)
