"""Settings of the SMTP ingest service (MAILSLUICE_INGEST_*)."""

from __future__ import annotations

import ipaddress
import re

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from mailsluice.config import MailsluiceSettings
from mailsluice.contracts.limits import DEFAULT_MAX_MESSAGE_SIZE
from mailsluice.contracts.suppressions import Scope
from mailsluice.ingest.addresses import AddressError, check_mailbox
from mailsluice.ingest.message import SINGLE_FIELDS
from mailsluice.policy.owners import UNRESTRICTED, OwnedDomains

MiB = 1024 * 1024
POOL_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def split_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


class IngestSettings(MailsluiceSettings):
    """The SMTP ingest: listeners, limits, TLS, authentication, relay control and pools."""

    model_config = SettingsConfigDict(env_prefix="MAILSLUICE_INGEST_", extra="ignore", frozen=True)

    listen_host: str = Field("127.0.0.1", description="Address the SMTP listener binds.")
    listen_port: int = Field(2525, ge=0, le=65535, description="SMTP port (0: any free port).")
    http_host: str = Field("127.0.0.1", description="Address of /metrics, /healthz, /readyz.")
    http_port: int = Field(9101, ge=0, le=65535, description="Port of the operator endpoints.")
    hostname: str = Field(
        "", description="Name in the greeting and Received headers (empty: the host's FQDN)."
    )
    max_message_size: int = Field(
        DEFAULT_MAX_MESSAGE_SIZE,
        ge=1024,
        le=200 * MiB,
        description="Largest message accepted (SIZE), bytes.",
    )
    max_recipients: int = Field(
        1000, ge=1, le=100000, description="Recipients per message; more get 452 4.5.3."
    )
    max_messages_per_connection: int = Field(
        1000, ge=1, description="Messages per connection before 421 4.7.0 and close."
    )
    max_errors_per_connection: int = Field(
        20, ge=1, description="Protocol errors per connection before 421 4.7.0 and close."
    )
    idle_timeout_s: float = Field(
        300.0, gt=0, le=3600, description="Close a connection idle this long (421 4.4.2)."
    )
    session_timeout_s: float = Field(
        1800.0, gt=0, le=86400, description="Close any connection open this long (421 4.4.2)."
    )
    greet_pause_s: float = Field(
        0.2,
        ge=0,
        le=30,
        description="Wait before the greeting; a client talking first gets 554 5.5.0 (0: off).",
    )
    tls_cert_file: str = Field("", description="PEM certificate; enables STARTTLS when set.")
    tls_key_file: str = Field("", description="PEM private key of the certificate.")
    credentials_file: str = Field(
        "",
        description="YAML/JSON users file (or Kubernetes Secret mount); empty: no AUTH users.",
    )
    trusted_networks: str = Field(
        "127.0.0.0/8,::1/128",
        description="Comma-separated CIDRs that may relay without AUTH (empty: none).",
    )
    trusted_pools: str = Field(
        "default", description="Comma-separated pools trusted-network clients may use."
    )
    default_pool: str = Field("default", description="Pool of trusted-network mail without header.")
    pool_header: str = Field(
        "X-Mailsluice-Pool", description="Header choosing the pool; removed before queueing."
    )
    publish_timeout_s: float = Field(
        15.0, gt=0, le=300, description="Longest wait for Kafka acks before answering 451 4.3.0."
    )
    verify_domains: bool = Field(
        True,
        description="Check recipient domains in DNS at RCPT (false: accept any domain, e.g. "
        "when every destination is routed to a sandbox or smarthost).",
    )
    mx_cache_size: int = Field(10000, ge=0, description="Domains kept in the MX verdict cache.")
    mx_cache_max_ttl_s: float = Field(
        300.0, ge=0, description="Upper bound on how long an MX verdict is cached."
    )
    shutdown_grace_s: float = Field(
        20.0, ge=0, le=600, description="On SIGTERM, how long in-flight transactions may finish."
    )
    rollup_file: str = Field("", description="Provider rollup TOML (empty: the packaged one).")
    feedback_addresses: str = Field(
        "",
        description="Comma-separated feedback-loop addresses registered with mailbox providers: "
        "any client may send to them; each ARF report (RFC 5965) becomes a complaint event, "
        "nothing is relayed (empty: none).",
    )
    # --- AUTH abuse and sender ownership (auth_guard.py, policy/owners.py) ---
    auth_fail_delay_s: float = Field(
        1.0,
        ge=0,
        le=60,
        description="Wait before the 535 of a failed AUTH; doubles with each further failure of "
        "the client IP or username within the window (0: none).",
    )
    auth_fail_delay_max_s: float = Field(
        8.0, ge=0, le=300, description="Upper bound on the wait before a failed AUTH's reply."
    )
    auth_max_failures_ip: int = Field(
        10,
        ge=0,
        description="Failed AUTHs from one client IP within the window that lock it out "
        "(454 4.7.0 to every AUTH, right password too; 0: no lockout per IP).",
    )
    auth_max_failures_user: int = Field(
        20,
        ge=0,
        description="Failed AUTHs for one username, from any IP, within the window that lock "
        "that username out (0: no lockout per username).",
    )
    auth_failure_window_s: float = Field(
        600.0, gt=0, le=86400, description="Window in which failed AUTHs are counted."
    )
    auth_lockout_s: float = Field(
        600.0, gt=0, le=86400, description="How long a lockout lasts; then counting restarts."
    )
    trusted_sender_domains: str = Field(
        "",
        description="Comma-separated sender domains (`example.com`, `*.example.com`) that "
        "unauthenticated trusted-network clients may use in MAIL FROM and From: (empty: any).",
    )
    # --- suppression scopes (scopes.py) ---
    trusted_tenant: str = Field(
        "",
        description="Tenant of mail from unauthenticated trusted-network clients: its suppression "
        "scopes (`tenant:NAME`, and `list:NAME/LIST` with a List-Id) and unsubscribe tokens "
        "(empty: none; AUTH users have their own `tenant`).",
    )

    # --- resource caps (caps.py) ---
    max_connections: int = Field(
        500, ge=1, description="SMTP connections open at once; more get 421 4.3.2 and close."
    )
    max_connections_per_ip: int = Field(
        20,
        ge=1,
        description="Connections open at once from one client address; more get 421 4.7.0.",
    )
    max_connections_per_trusted_ip: int = Field(
        0,
        ge=0,
        description="The same for trusted-network clients (0: no per-address cap, only "
        "max_connections; like Postfix's smtpd_client_event_limit_exceptions).",
    )
    junk_command_limit: int = Field(
        100,
        ge=1,
        description="NOOP, RSET, VRFY, EXPN and HELP per connection since the last message "
        "queued; more get 421 4.7.0 and close.",
    )
    aborted_transaction_limit: int = Field(
        100,
        ge=1,
        description="Transactions ended before DATA (RSET, EHLO, HELO after MAIL) since the last "
        "message queued; the next MAIL gets 421 4.7.0 and close.",
    )
    data_budget_bytes: int = Field(
        4 * DEFAULT_MAX_MESSAGE_SIZE,
        ge=1024,
        description="Bytes of message data held at once by all DATA transfers: each reserves "
        "its declared SIZE (else 256 KiB) before the 354 and more as its bytes arrive, waiting "
        "for room (421 4.3.1 after data_budget_wait_s). Bounds ingest memory; at least "
        "max_message_size.",
    )
    data_budget_wait_s: float = Field(
        60.0,
        ge=0,
        le=600,
        description="How long DATA waits for the budget before 452 4.3.1.",
    )
    single_headers: str = Field(
        ",".join(SINGLE_FIELDS),
        description="Comma-separated header fields a message may carry at most once (RFC 5322 "
        "3.6); a message with two gets 550 5.6.0 at the end of DATA (empty: no check).",
    )
    allow_private_destinations: bool = Field(
        False,
        description="Accept recipients whose domain's MX hosts resolve only to private, "
        "loopback, link-local, CGNAT or other non-global addresses (tests and sandboxes on "
        "loopback only; otherwise 550 5.4.4 at RCPT, as delivery would refuse them).",
    )

    @field_validator("trusted_networks")
    @classmethod
    def _networks(cls, value: str) -> str:
        for item in split_list(value):
            ipaddress.ip_network(item, strict=False)
        return value

    @field_validator("feedback_addresses")
    @classmethod
    def _feedback(cls, value: str) -> str:
        for item in split_list(value):
            try:
                check_mailbox(item)
            except AddressError as exc:
                raise ValueError(f"bad feedback address {item!r}: {exc.detail}") from None
        return value

    @field_validator("trusted_sender_domains")
    @classmethod
    def _sender_domains(cls, value: str) -> str:
        OwnedDomains.parse(split_list(value))
        return value

    @field_validator("trusted_tenant")
    @classmethod
    def _trusted_tenant(cls, value: str) -> str:
        if value:
            Scope.parse(f"tenant:{value}")  # a scope name: letters, digits and ._@+-
        return value

    @field_validator("single_headers")
    @classmethod
    def _single_headers(cls, value: str) -> str:
        for item in split_list(value):
            if not re.fullmatch(r"[A-Za-z0-9-]{1,76}", item):
                raise ValueError(f"bad header name {item!r}")
        return value

    @field_validator("trusted_pools", "default_pool")
    @classmethod
    def _pools(cls, value: str) -> str:
        for item in split_list(value):
            if not POOL_NAME.match(item):
                raise ValueError(f"bad pool name {item!r}")
        return value

    @field_validator("pool_header")
    @classmethod
    def _header(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9-]{1,76}", value):
            raise ValueError("not a valid header name")
        return value

    @model_validator(mode="after")
    def _budget(self) -> IngestSettings:
        if self.data_budget_bytes < self.max_message_size:
            raise ValueError("data_budget_bytes must be at least max_message_size")
        return self

    @model_validator(mode="after")
    def _tls_pair(self) -> IngestSettings:
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("tls_cert_file and tls_key_file must be set together")
        return self

    def networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(n, strict=False) for n in split_list(self.trusted_networks)]

    def feedback_address_set(self) -> frozenset[str]:
        """Feedback addresses, lower-cased (compared without regard to case)."""
        return frozenset(item.lower() for item in split_list(self.feedback_addresses))

    def single_header_set(self) -> frozenset[str]:
        """Header fields allowed once, lower-cased (field names compare without case)."""
        return frozenset(item.lower() for item in split_list(self.single_headers))

    def trusted_pool_list(self) -> list[str]:
        pools = split_list(self.trusted_pools)
        return pools if self.default_pool in pools else [self.default_pool, *pools]

    def trusted_owned_domains(self) -> OwnedDomains:
        domains = split_list(self.trusted_sender_domains)
        return OwnedDomains.parse(domains) if domains else UNRESTRICTED
