"""Settings of the outbound SMTP client: identity, routes, TLS policy, RFC 5321 timeouts."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from mailsluice.config import MailsluiceSettings

_HOST_NAME = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,62})(\.[a-z0-9_]([a-z0-9_-]{0,62}))*")

TlsPolicy = Literal["opportunistic", "required", "none"]


@dataclass(frozen=True)
class Endpoint:
    """A next hop named by configuration: host name or IP literal, and port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_endpoint(value: str, default_port: int = 25) -> Endpoint:
    """'host', 'host:port', '[v6]:port' or a bare IPv6 literal → Endpoint (ValueError if bad)."""
    value = value.strip()
    if not value:
        raise ValueError("empty host")
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else default_port
        if rest and not rest.startswith(":"):
            raise ValueError(f"bad endpoint {value!r}")
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
        port = int(port_text)
    else:
        host, port = value, default_port  # a name, an IPv4 literal or a bare IPv6 literal
    host = host.strip().lower().rstrip(".")
    if value.startswith("[") or ":" in host:
        ipaddress.IPv6Address(host)  # brackets hold an IPv6 literal and nothing else
    elif not _HOST_NAME.fullmatch(host):
        raise ValueError(f"bad host name in {value!r}")
    if not 0 < port < 65536:
        raise ValueError(f"bad port in {value!r}")
    return Endpoint(host, port)


def parse_static_routes(value: str, default_port: int = 25) -> dict[str, Endpoint]:
    """'example.com=127.0.0.5:2525,.example.org=relay:25,*=127.0.0.1:1025' → routes.

    Like Postfix transport maps: a key is a domain (exact match), '.domain' (any subdomain)
    or '*' (everything else)."""
    routes: dict[str, Endpoint] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        key, sep, target = item.partition("=")
        key = key.strip().lower().rstrip(".")
        if not sep or not key or " " in key:
            raise ValueError(f"static route {item!r} is not domain=host:port")
        if key in routes:
            raise ValueError(f"static route for {key!r} given twice")
        routes[key] = parse_endpoint(target, default_port)
    return routes


def parse_source_addresses(value: object) -> tuple[str, ...]:
    """'192.0.2.10, 2001:db8::1' (or a sequence) → IP literals in normal form (ValueError when
    one is no IP address or two are the same address)."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ValueError("must be IP addresses, comma-separated")
    found: list[str] = []
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        address = str(ipaddress.ip_address(text))  # one spelling per address: 2001:DB8::1
        if address in found:
            raise ValueError(f"source address {text} given twice")
        found.append(address)
    return tuple(found)


class OutboundSettings(MailsluiceSettings):
    """The SMTP client of delivery workers: how they reach recipients' mail servers."""

    model_config = SettingsConfigDict(
        env_prefix="MAILSLUICE_OUTBOUND_", extra="ignore", frozen=True
    )

    ehlo_name: str = Field("localhost", description="Name sent in EHLO (the pool's FQDN).")
    source_addresses: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="IP addresses the pool sends from, comma-separated; each send binds one "
        "(the first unless the shaper picks another); empty: any.",
    )
    static_routes: str = Field(
        "",
        description="Routes bypassing MX lookup, 'domain=host:port,.sub.domain=host,*=host:port'.",
    )
    smarthost: str = Field(
        "", description="host:port all mail is relayed through (after static routes); empty: none."
    )
    port: int = Field(25, gt=0, lt=65536, description="Port of remote MX servers.")
    tls_policy: TlsPolicy = Field(
        "opportunistic",
        description="STARTTLS: opportunistic (when offered), required (defer if not), none.",
    )
    tls_verify: bool = Field(
        False, description="Verify the remote certificate and name (fail the session if bad)."
    )
    connect_timeout_s: float = Field(30.0, gt=0, le=600, description="TCP connect timeout.")
    greeting_timeout_s: float = Field(
        300.0, gt=0, le=3600, description="Initial 220 greeting timeout (RFC 5321 4.5.3.2.1)."
    )
    command_timeout_s: float = Field(
        300.0, gt=0, le=3600, description="EHLO, STARTTLS, RSET and QUIT reply timeout."
    )
    mail_timeout_s: float = Field(
        300.0, gt=0, le=3600, description="MAIL FROM reply timeout (RFC 5321 4.5.3.2.2)."
    )
    rcpt_timeout_s: float = Field(
        300.0, gt=0, le=3600, description="RCPT TO reply timeout (RFC 5321 4.5.3.2.3)."
    )
    data_init_timeout_s: float = Field(
        120.0, gt=0, le=3600, description="DATA 354 reply timeout (RFC 5321 4.5.3.2.4)."
    )
    data_block_timeout_s: float = Field(
        180.0, gt=0, le=3600, description="Time to hand a block of data to the peer (4.5.3.2.5)."
    )
    data_end_timeout_s: float = Field(
        600.0, gt=0, le=3600, description="Reply to the final dot timeout (RFC 5321 4.5.3.2.6)."
    )
    messages_per_connection: int = Field(
        100, ge=1, le=100000, description="Messages sent over one connection before QUIT."
    )
    idle_keep_s: float = Field(
        30.0, ge=0, le=3600, description="How long an idle connection is kept for reuse."
    )
    max_idle_connections: int = Field(
        256, ge=0, le=100000, description="Idle connections kept for reuse, over all destinations."
    )
    allow_private_destinations: bool = Field(
        False,
        description="Deliver to MX hosts with private/loopback/link-local addresses (tests only).",
    )
    mx_cache_size: int = Field(
        10000, ge=0, le=10_000_000, description="Domains whose MX answers are cached."
    )
    max_hops: int = Field(
        10, ge=1, le=100, description="MX addresses tried, in preference order, per attempt."
    )

    @field_validator("ehlo_name")
    @classmethod
    def _valid_ehlo(cls, value: str) -> str:
        value = value.strip()
        if not value or any(ch.isspace() or ord(ch) < 33 or ord(ch) == 127 for ch in value):
            raise ValueError("must be a host name without spaces or control characters")
        return value

    @field_validator("source_addresses", mode="before")
    @classmethod
    def _valid_sources(cls, value: object) -> tuple[str, ...]:
        return parse_source_addresses(value)

    @field_validator("static_routes")
    @classmethod
    def _valid_routes(cls, value: str) -> str:
        parse_static_routes(value)
        return value

    @field_validator("smarthost")
    @classmethod
    def _valid_smarthost(cls, value: str) -> str:
        if value.strip():
            parse_endpoint(value)
        return value.strip()

    def routes(self) -> dict[str, Endpoint]:
        return parse_static_routes(self.static_routes, self.port)

    def smarthost_endpoint(self) -> Endpoint | None:
        return parse_endpoint(self.smarthost, self.port) if self.smarthost else None
