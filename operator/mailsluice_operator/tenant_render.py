"""SendingTenants into the tenants file (mailsluice.tenancy.model's format): pure, no I/O.

Every tenant of a namespace goes into one file, oldest first. A tenant is rendered whole or
not at all: with a referenced Secret or key missing (a TemporaryProblem), with a spec the file's
model refuses, or with a domain, SMTP user or API key id that an older tenant already claims (a
PermanentProblem). Claims come from the spec, so an older tenant keeps its names while it is
suspended or broken; a newer tenant can never take them over by waiting for that.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from mailsluice.policy.owners import normalise_domain
from mailsluice.tenancy.model import TenancyError, parse_tenants
from mailsluice_operator.problems import PermanentProblem, PoolProblem, TemporaryProblem
from mailsluice_operator.tenant_spec import TENANT_NAME, with_defaults

FILE_KEY = "tenants.yaml"
# Secret name -> its data (decoded); None: the Secret does not exist.
SecretData = Mapping[str, Mapping[str, str] | None]


@dataclass(frozen=True)
class TenantBody:
    name: str
    generation: int
    created: str  # RFC 3339, UTC: sorts by time
    spec: Mapping[str, Any]  # with the CRD's defaults
    status: Mapping[str, Any]

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> TenantBody:
        meta = body["metadata"]
        return cls(
            name=meta["name"],
            generation=int(meta.get("generation", 1)),
            created=str(meta.get("creationTimestamp") or ""),
            spec=with_defaults(body.get("spec") or {}),
            status=body.get("status") or {},
        )


def oldest_first(tenants: Iterable[TenantBody]) -> list[TenantBody]:
    return sorted(tenants, key=lambda t: (t.created, t.name))


def decode_secret(secret: Mapping[str, Any] | None) -> Mapping[str, str] | None:
    """A Secret as the API returns it (base64 data) to its text values."""
    if secret is None:
        return None
    data = secret.get("data") or {}
    return {k: base64.b64decode(v).decode("utf-8", "replace").strip() for k, v in data.items()}


def secret_names(spec: Mapping[str, Any]) -> set[str]:
    """The Secrets a tenant's spec reads."""
    refs = [k.get("secretRef") for k in spec.get("apiKeys") or []]
    refs += [u.get("secretRef") for u in (spec.get("smtp") or {}).values()]
    refs += [w.get("secretsRef") for w in spec.get("webhooks") or []]
    return {r["name"] for r in refs if r and r.get("name")}


def _secret(secrets: SecretData, name: str) -> Mapping[str, str]:
    data = secrets.get(name)
    if data is None:
        raise TemporaryProblem("SecretNotFound", f"Secret {name} does not exist")
    return data


def _value(secrets: SecretData, ref: Mapping[str, Any]) -> str:
    data = _secret(secrets, ref["name"])
    if ref["key"] not in data:
        raise TemporaryProblem("SecretKeyNotFound", f"Secret {ref['name']} has no key {ref['key']}")
    return data[ref["key"]]


def _webhook_secrets(secrets: SecretData, ref: Mapping[str, Any]) -> list[str]:
    data = _secret(secrets, ref["name"])
    keys = ref.get("keys") or sorted(data)
    for key in keys:
        if key not in data:
            raise TemporaryProblem("SecretKeyNotFound", f"Secret {ref['name']} has no key {key}")
    return [data[k] for k in keys]


def entry_of(spec: Mapping[str, Any], secrets: SecretData) -> dict[str, Any]:
    """The tenant's entry in the tenants file, Secret references resolved."""
    entry: dict[str, Any] = {"pools": list(spec["pools"]), "domains": list(spec["domains"])}
    keys = spec.get("apiKeys") or []
    if keys:
        entry["api_keys"] = [
            {"id": k["id"], "hash": k.get("hash") or _value(secrets, k["secretRef"])} for k in keys
        ]
    users = spec.get("smtp") or {}
    if users:
        entry["smtp"] = {
            user: {"password": u.get("passwordHash") or _value(secrets, u["secretRef"])}
            for user, u in sorted(users.items())
        }
    quotas = spec.get("quotas") or {}
    if quotas:
        entry["quotas"] = {"per_hour": quotas.get("perHour"), "per_day": quotas.get("perDay")}
    if spec.get("tracking"):
        entry["tracking"] = spec["tracking"]
    hygiene = {k: v for k, v in (spec.get("hygiene") or {}).items() if v is not None}
    if hygiene:
        entry["hygiene"] = hygiene  # enabled, deliveries, days: the same names
    hooks = spec.get("webhooks") or []
    if hooks:
        entry["webhooks"] = [
            {
                "id": w["id"],
                "url": w["url"],
                "events": list(w["events"]),
                "secrets": _webhook_secrets(secrets, w["secretsRef"]),
            }
            for w in hooks
        ]
    return entry


@dataclass(frozen=True)
class Claims:
    """The names one tenant claims; two tenants may not share any."""

    domains: frozenset[str]  # normalised; "*.x" kept as the suffix ".x"
    smtp_users: frozenset[str]
    key_ids: frozenset[str]

    @classmethod
    def of(cls, spec: Mapping[str, Any]) -> Claims:
        domains = set()
        for pattern in spec.get("domains") or []:
            wildcard = str(pattern).startswith("*.")
            name = normalise_domain(str(pattern)[2:] if wildcard else str(pattern))
            if name:
                domains.add("." + name if wildcard else name)
        return cls(
            frozenset(domains),
            frozenset(spec.get("smtp") or {}),
            frozenset(str(k.get("id")) for k in spec.get("apiKeys") or []),
        )


def _overlap(a: str, b: str) -> bool:
    """Two domain claims overlap: equal, or one's wildcard covers the other."""
    if a == b:
        return True
    return (a.startswith(".") and b.endswith(a)) or (b.startswith(".") and a.endswith(b))


def _shown(domain: str) -> str:
    return "*" + domain if domain.startswith(".") else domain


def check_claims(name: str, mine: Claims, older: Sequence[tuple[str, Claims]]) -> None:
    """Raises PermanentProblem for the first name an older tenant already claims."""
    for other, theirs in older:
        for domain in sorted(mine.domains):
            held = next((d for d in sorted(theirs.domains) if _overlap(domain, d)), None)
            if held is not None:
                raise PermanentProblem(
                    "DomainClaimed",
                    f"domain {_shown(domain)} overlaps {_shown(held)} of the older tenant {other}",
                )
        for reason, what, ours, taken in (
            ("SmtpUserClaimed", "SMTP user", mine.smtp_users, theirs.smtp_users),
            ("ApiKeyIdClaimed", "API key id", mine.key_ids, theirs.key_ids),
        ):
            clash = sorted(ours & taken)
            if clash:
                message = f"{what} {clash[0]} belongs to the older tenant {other}"
                raise PermanentProblem(reason, message)


@dataclass
class Rendered:
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)  # rendered tenants
    problems: dict[str, PoolProblem] = field(default_factory=dict)
    suspended: set[str] = field(default_factory=set)


def render(tenants: Sequence[TenantBody], secrets: SecretData) -> Rendered:
    """Every tenant's entry or the problem that keeps it out, oldest first."""
    out = Rendered()
    older: list[tuple[str, Claims]] = []
    for tenant in oldest_first(tenants):
        claims = Claims.of(tenant.spec)
        try:
            _render_one(tenant, claims, older, secrets, out)
        except PoolProblem as exc:
            out.problems[tenant.name] = exc
        older.append((tenant.name, claims))
    parse_tenants({"tenants": out.entries})  # the claims checks above cover its rules
    return out


def _render_one(
    tenant: TenantBody,
    claims: Claims,
    older: Sequence[tuple[str, Claims]],
    secrets: SecretData,
    out: Rendered,
) -> None:
    if not re.match(TENANT_NAME, tenant.name):
        raise PermanentProblem("InvalidName", f"{tenant.name!r} is not a tenant name")
    check_claims(tenant.name, claims, older)
    if tenant.spec.get("suspended"):
        out.suspended.add(tenant.name)
        return
    entry = entry_of(tenant.spec, secrets)
    try:
        parse_tenants({tenant.name: entry})
    except TenancyError as exc:
        raise PermanentProblem("InvalidTenant", str(exc)) from None
    out.entries[tenant.name] = entry


def tenants_yaml(entries: Mapping[str, Any]) -> str:
    """The file, byte-identical for the same tenants (a re-apply changes nothing)."""
    header = "# Rendered by the mailsluice operator from the namespace's SendingTenants.\n"
    return header + yaml.safe_dump({"tenants": dict(entries)}, sort_keys=True, width=100)


def secret_manifest(
    name: str, namespace: str, text: str, owner: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """`owner`: an ownerReference (the operator's Deployment), so the garbage collector removes
    the Secret with it."""
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": {
            "app.kubernetes.io/part-of": "mailsluice",
            "app.kubernetes.io/managed-by": "mailsluice-operator",
        },
    }
    if owner:
        meta["ownerReferences"] = [dict(owner)]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta,
        "type": "Opaque",
        "data": {FILE_KEY: base64.b64encode(text.encode()).decode()},
    }
