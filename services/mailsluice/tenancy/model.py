"""What a tenant is: the tenants file's schema (pydantic; the operator's SendingTenant resource
renders into the same shape) and the checks that span tenants (a key id, an SMTP user name, a
webhook id is used once).

    tenants:
      acme:
        pools: [default, bulk]          # the pools it may use; the first is its default
        domains: [acme.test, "*.acme.test"]   # sender domains it owns (envelope and From:)
        api_keys:                       # several at once for rotation (tenancy/keys.py)
          - {id: k2026a, hash: "sha256$<64 hex>"}
        smtp:                           # SMTP AUTH users sending for this tenant
          acme-app: {password: "scrypt$..."}   # python -m mailsluice.ingest.auth hash
        quotas: {per_hour: 100000, per_day: 1000000}   # recipients accepted; absent: none
        tracking: clicks                # open/click tracking when a message does not say:
                                        # off, opens, clicks, all; absent: the pool's default
        hygiene: {enabled: true, deliveries: 10, days: 90}  # unengaged suppression; absent:
                                        # the stream processors' settings
        webhooks:
          - id: main
            url: https://hooks.acme.test/mailsluice
            events: [delivered, bounce, complaint]
            secrets: ["whsec_<base64 of 24-64 bytes>"]  # the first signs; all are sent

A tenant owns at least one sender domain: an API key must never send as anyone at all.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from functools import cached_property
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mailsluice.contracts.suppressions import Scope, ScopeKind
from mailsluice.contracts.webhooks import WebhookEventType
from mailsluice.policy.owners import OwnedDomains, OwnersError
from mailsluice.tenancy.keys import DIGEST, KEY_ID
from mailsluice.tracking.settings import Choice

_NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"  # webhook ids and pool names
_NAME = re.compile(_NAME_PATTERN)
# An SMTP AUTH user name: printable ASCII without spaces (it is a key in two files).
_SMTP_USER = re.compile(r"^[\x21-\x7e]{1,255}$")
PASSWORD_SCHEMES = ("scrypt", "pbkdf2_sha256")
WEBHOOK_SECRET_PREFIX = "whsec_"


class TenancyError(ValueError):
    """The tenants file is wrong; the message names where."""


class ApiKey(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=KEY_ID.pattern, description="The key id, in clear in the key.")
    hash: str = Field(pattern=DIGEST.pattern, description="sha256$<hex digest of the whole key>")


class SmtpUser(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    password: str = Field(description="scrypt or pbkdf2_sha256 hash (ingest/auth.py)")

    @field_validator("password")
    @classmethod
    def _hashed(cls, value: str) -> str:
        if value.split("$", 1)[0] not in PASSWORD_SCHEMES:
            raise ValueError("must be a scrypt or pbkdf2_sha256 hash, never a password")
        return value


class Quotas(BaseModel):
    """Recipients a tenant may have accepted per clock hour and per UTC day (None: no limit)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    per_hour: int | None = Field(None, gt=0)
    per_day: int | None = Field(None, gt=0)


class Hygiene(BaseModel):
    """The tenant's unengaged-address policy (mailsluice/engagement/policy.py); a field left
    out takes the stream processors' setting (MAILSLUICE_STREAMS_HYGIENE_*)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool | None = None
    deliveries: int | None = Field(None, ge=1, le=1000)
    days: int | None = Field(None, ge=1, le=3650)


def webhook_secret_bytes(secret: str) -> bytes:
    """The key bytes of a `whsec_<base64>` secret (Standard Webhooks); ValueError otherwise."""
    if not secret.startswith(WEBHOOK_SECRET_PREFIX):
        raise ValueError("a webhook secret is whsec_<base64>")
    try:
        raw = base64.b64decode(secret[len(WEBHOOK_SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a webhook secret is whsec_<base64>") from None
    if not 24 <= len(raw) <= 64:
        raise ValueError("a webhook secret holds 24 to 64 bytes")
    return raw


class Webhook(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=_NAME_PATTERN, description="Names the endpoint in its status.")
    url: str = Field(min_length=8, max_length=2000)
    events: tuple[WebhookEventType, ...] = Field(min_length=1)
    secrets: tuple[str, ...] = Field(min_length=1, max_length=4)

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("secrets")
    @classmethod
    def _secrets(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for secret in value:
            webhook_secret_bytes(secret)
        return value


class Tenant(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    pools: tuple[str, ...] = Field(min_length=1)
    domains: tuple[str, ...] = Field(min_length=1)
    api_keys: tuple[ApiKey, ...] = ()
    smtp: dict[str, SmtpUser] = Field(default_factory=dict)
    quotas: Quotas = Quotas(per_hour=None, per_day=None)
    webhooks: tuple[Webhook, ...] = ()
    # Open and click tracking of the tenant's mail when a message does not say (None: the
    # pool's default, MAILSLUICE_TRACKING_DEFAULT).
    tracking: Choice | None = None
    hygiene: Hygiene | None = None

    @field_validator("name")
    @classmethod
    def _scope_name(cls, value: str) -> str:
        Scope.parse(f"tenant:{value}")  # a tenant is a suppression scope: the same names
        return value

    @field_validator("pools")
    @classmethod
    def _pools(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pool in value:
            if not _NAME.match(pool):
                raise ValueError(f"{pool!r} is not a pool name (a-z, 0-9, '-')")
        if len(set(value)) != len(value):
            raise ValueError("a pool is listed twice")
        return value

    @field_validator("smtp")
    @classmethod
    def _smtp_users(cls, value: dict[str, SmtpUser]) -> dict[str, SmtpUser]:
        for user in value:
            if not _SMTP_USER.match(user):
                raise ValueError(f"{user[:80]!r} is not a user name (printable ASCII, no spaces)")
        return value

    @field_validator("domains")
    @classmethod
    def _domains(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        try:
            OwnedDomains.parse(value)
        except OwnersError as exc:
            raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _unique_within(self) -> Tenant:
        for what, ids in (
            ("api key id", [k.id for k in self.api_keys]),
            ("webhook id", [w.id for w in self.webhooks]),
        ):
            if len(set(ids)) != len(ids):
                raise ValueError(f"a {what} is used twice")
        return self

    @property
    def default_pool(self) -> str:
        return self.pools[0]

    @cached_property
    def owned(self) -> OwnedDomains:
        return OwnedDomains.parse(self.domains)

    @property
    def scope(self) -> Scope:
        """The tenant's own suppression scope."""
        return Scope(ScopeKind.TENANT, tenant=self.name)


def parse_tenants(data: Any) -> dict[str, Tenant]:
    """The tenants of a loaded file (`{tenants: {...}}` or the mapping itself); TenancyError
    naming the tenant and field for anything wrong."""
    if isinstance(data, Mapping) and "tenants" in data:
        data = data["tenants"]
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise TenancyError("tenants must be a mapping of tenant names")
    tenants: dict[str, Tenant] = {}
    for name, spec in data.items():
        if not isinstance(spec, Mapping):
            raise TenancyError(f"tenant {name!r}: must be a mapping")
        try:
            tenants[str(name)] = Tenant.model_validate({**spec, "name": str(name)})
        except ValidationError as exc:
            raise TenancyError(f"tenant {name!r}: {_describe(exc)}") from None
    _unique_across(tenants)
    return tenants


def _describe(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '(tenant)'}: {err['msg']}"
        for err in exc.errors()
    )


def _unique_across(tenants: Mapping[str, Tenant]) -> None:
    """A key id or SMTP user name finds one tenant, so neither may be used by two; a sender
    domain belongs to one tenant (or tenant B could send as A)."""
    _domains_apart(tenants)
    keys: dict[str, str] = {}
    users: dict[str, str] = {}
    for tenant in tenants.values():
        for what, seen, items in (
            ("api key id", keys, [k.id for k in tenant.api_keys]),
            ("SMTP user", users, list(tenant.smtp)),
        ):
            for item in items:
                if item in seen:
                    raise TenancyError(
                        f"{what} {item!r} belongs to both {seen[item]!r} and {tenant.name!r}"
                    )
                seen[item] = tenant.name


def _domains_apart(tenants: Mapping[str, Tenant]) -> None:
    """No tenant owns a domain another one owns: neither the same name nor one inside the
    other's wildcard (`eu.acme.test` under `*.acme.test`, or `*.eu.acme.test` under it)."""
    seen: list[Tenant] = []
    for tenant in tenants.values():
        mine = tenant.owned
        for other in seen:
            theirs = other.owned
            shared = [d for d in mine.exact if theirs.owns_domain(d)]
            shared += [d for d in theirs.exact if mine.owns_domain(d)]
            shared += [
                "*" + s
                for s in mine.suffixes
                for t in theirs.suffixes
                if s.endswith(t) or t.endswith(s)
            ]
            if shared:
                raise TenancyError(
                    f"sender domain {sorted(shared)[0]!r} belongs to both {other.name!r} "
                    f"and {tenant.name!r}"
                )
        seen.append(tenant)
