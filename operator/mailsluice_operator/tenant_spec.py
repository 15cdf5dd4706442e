"""The SendingTenant's spec and status as pydantic models: the one source of its CRD's schema
(types, limits, defaults, CEL rules), as `spec` is for the SendingPool.

A SendingTenant renders into one entry of the tenants file (mailsluice.tenancy.model): the same
fields, camel-cased, with secret material (API key digests, SMTP password hashes, webhook
secrets) either inline or read from a Secret. The specs are read as plain dicts (kopf's
bodies); `tenant_render` checks again what the API server's rules check, so a tenant stored under
an older CRD cannot crash a round.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import ConfigDict, Field

from mailsluice.contracts.webhooks import WebhookEventType
from mailsluice.tenancy.keys import DIGEST, KEY_ID
from mailsluice.tracking.settings import Choice
from mailsluice_operator import schema
from mailsluice_operator.crd import POOL_NAME
from mailsluice_operator.spec import DNS_NAME, INT64, Condition, Count, Model, _map_list, _rules

# A sender domain the tenant owns, or `*.domain` for its subdomains (policy/owners.py).
DOMAIN_PATTERN = r"^(\*\.)?" + DNS_NAME[1:]
# A tenant's name is a suppression scope (tenant:NAME) and a path segment of the API.
TENANT_NAME = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
WEBHOOK_ID = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
SECRET_KEY = r"^[-._a-zA-Z0-9]+$"
PASSWORD_HASH = r"^(scrypt|pbkdf2_sha256)\$\S+$"


class SecretKeyRef(Model):
    """One key of a Secret in the tenant's namespace."""

    name: str = Field(min_length=1, max_length=253, pattern=DNS_NAME, description="Secret name.")
    key: str = Field(
        min_length=1, max_length=253, pattern=SECRET_KEY, description="Key in the Secret."
    )


def _one_of(first: str, second: str) -> dict[str, Any]:
    return _rules((f"has(self.{first}) != has(self.{second})", f"give {first} or {second}"))


class ApiKey(Model):
    model_config = ConfigDict(json_schema_extra=_one_of("hash", "secretRef"))

    id: str = Field(
        min_length=6,
        max_length=32,
        pattern=KEY_ID.pattern,
        description="The key id (in clear in the key ms_<id>_<secret>).",
    )
    hash: str | None = Field(
        None,
        pattern=DIGEST.pattern,
        description="sha256$<hex digest of the whole key>; never the key itself.",
    )
    secret_ref: SecretKeyRef | None = Field(
        None, description="Where the digest is kept instead (a Secret key holding sha256$...)."
    )


class SmtpUser(Model):
    model_config = ConfigDict(json_schema_extra=_one_of("passwordHash", "secretRef"))

    password_hash: str | None = Field(
        None,
        max_length=1024,
        pattern=PASSWORD_HASH,
        description="scrypt$... or pbkdf2_sha256$... (python -m mailsluice.ingest.auth hash).",
    )
    secret_ref: SecretKeyRef | None = Field(
        None, description="Where the password hash is kept instead."
    )


class Quotas(Model):
    model_config = ConfigDict(
        json_schema_extra=_rules(
            (
                "!has(self.perHour) || !has(self.perDay) || self.perDay >= self.perHour",
                "perDay must not be below perHour",
            )
        )
    )

    per_hour: int | None = Field(
        None, ge=1, description="Recipients accepted per clock hour.", json_schema_extra=INT64
    )
    per_day: int | None = Field(
        None, ge=1, description="Recipients accepted per UTC day.", json_schema_extra=INT64
    )


class Hygiene(Model):
    """The tenant's unengaged-address policy (mailsluice/engagement/policy.py); an unset field
    takes MAILSLUICE_HYGIENE_* of the stream processors."""

    enabled: bool | None = Field(
        None,
        description="Suppress the tenant's unengaged addresses (reason unengaged, in its scope).",
    )
    deliveries: int | None = Field(
        None, ge=1, le=1000, description="Deliveries without a person's open or click ..."
    )
    days: int | None = Field(
        None, ge=1, le=3650, description="... spanning at least this many days."
    )


class SecretsRef(Model):
    name: str = Field(
        min_length=1,
        max_length=253,
        pattern=DNS_NAME,
        description="Secret whose values are whsec_<base64> signing secrets.",
    )
    keys: list[Annotated[str, Field(max_length=253, pattern=SECRET_KEY)]] | None = Field(
        None,
        min_length=1,
        max_length=4,
        description="The Secret's keys to use, in order (the first signs first); unset: every "
        "key, in name order.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )


class Webhook(Model):
    model_config = ConfigDict(
        json_schema_extra=_rules(
            (
                "isURL(self.url) && url(self.url).getScheme() in ['http', 'https']",
                "url must be an http:// or https:// URL",
            )
        )
    )

    id: str = Field(max_length=63, pattern=WEBHOOK_ID, description="Names the endpoint.")
    url: str = Field(min_length=8, max_length=2000, description="Where events are POSTed.")
    events: list[WebhookEventType] = Field(
        min_length=1,
        max_length=len(WebhookEventType),
        description="Event types sent to this endpoint.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    secrets_ref: SecretsRef = Field(description="The endpoint's signing secrets.")


class TenantSpec(Model):
    """A tenant of the HTTP API and SMTP submission: keys, domains, pools, quotas, webhooks."""

    model_config = ConfigDict(
        json_schema_extra=_rules(
            ("size(self.domains) > 0", "a tenant owns at least one sender domain")
        )
    )

    pools: list[Annotated[str, Field(max_length=40, pattern=POOL_NAME)]] = Field(
        min_length=1,
        max_length=64,
        description="SendingPools the tenant may use; the first is its default.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    domains: list[Annotated[str, Field(max_length=255, pattern=DOMAIN_PATTERN)]] = Field(
        min_length=1,
        max_length=256,
        description="Sender domains the tenant owns (envelope and header From); *.domain: "
        "every subdomain. A domain claimed by an older tenant stays that tenant's.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    api_keys: list[ApiKey] | None = Field(
        None,
        max_length=32,
        description="API keys (several at once for rotation), stored as digests only.",
        json_schema_extra=_map_list("id"),
    )
    smtp: dict[str, SmtpUser] | None = Field(
        None,
        max_length=64,
        description="SMTP AUTH users sending for the tenant, by user name.",
    )
    quotas: Quotas | None = Field(None, description="Recipients per hour and day; unset: none.")
    webhooks: list[Webhook] | None = Field(
        None,
        max_length=16,
        description="Endpoints that receive the tenant's events, signed (Standard Webhooks).",
        json_schema_extra=_map_list("id"),
    )
    tracking: Choice | None = Field(
        None,
        description="Open and click tracking of the tenant's mail when a message does not say: "
        "off, opens, clicks or all; unset: the pool's default.",
    )
    hygiene: Hygiene | None = Field(
        None,
        description="Unengaged suppression: see `mailsluice engagement report` before enabling.",
    )
    suspended: bool = Field(
        False,
        description="true: the tenant is left out of the tenants file (its keys, SMTP users "
        "and webhooks stop) but keeps its claims on domains, users and key ids.",
    )


class TenantStatus(Model):
    # kopf keeps its own progress here; without this the API server prunes it.
    model_config = ConfigDict(extra="allow")

    observed_generation: Count = None
    conditions: list[Condition] | None = Field(None, json_schema_extra=_map_list("type"))
    secret: str | None = Field(None, description="The Secret the tenant is rendered into.")


SPEC_SCHEMA = schema.structural(TenantSpec)
STATUS_SCHEMA = schema.structural(TenantStatus)


def with_defaults(spec: Mapping[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = schema.with_defaults(SPEC_SCHEMA, spec)
    return result
