"""The tenants file's schema: what it takes, what it refuses and that the refusal names the
tenant and the field."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from mailsluice.contracts.suppressions import Scope, ScopeKind
from mailsluice.tenancy.keys import digest_of
from mailsluice.tenancy.model import TenancyError, parse_tenants, webhook_secret_bytes

HASH = "pbkdf2_sha256$1$c2FsdA==$aGFzaA=="
SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()


def tenant(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"pools": ["default", "bulk"], "domains": ["acme.test", "*.acme.test"]}
    spec.update(overrides)
    return spec


def test_a_full_tenant_reads() -> None:
    tenants = parse_tenants(
        {
            "tenants": {
                "acme": tenant(
                    api_keys=[{"id": "k2026a", "hash": digest_of("ms_k2026a_x")}],
                    smtp={"acme-app": {"password": HASH}},
                    quotas={"per_hour": 100, "per_day": 1000},
                    webhooks=[
                        {
                            "id": "main",
                            "url": "https://hooks.acme.test/ms",
                            "events": ["delivered", "bounce"],
                            "secrets": [SECRET],
                        }
                    ],
                )
            }
        }
    )
    acme = tenants["acme"]
    assert acme.name == "acme" and acme.default_pool == "default"
    assert acme.owned.owns_address("news@eu.acme.test")
    assert not acme.owned.owns_address("news@acme.test.evil.test")
    assert acme.scope == Scope(ScopeKind.TENANT, tenant="acme")
    assert acme.quotas.per_hour == 100 and acme.smtp["acme-app"].password == HASH
    assert webhook_secret_bytes(acme.webhooks[0].secrets[0]) == b"k" * 32


def test_the_mapping_itself_and_an_empty_file() -> None:
    assert set(parse_tenants({"acme": tenant()})) == {"acme"}
    assert parse_tenants(None) == {}
    assert parse_tenants({"tenants": None}) == {}


@pytest.mark.parametrize(
    ("spec", "names"),
    [
        (tenant(domains=["not a domain"]), "domains"),
        (tenant(domains=["*"]), "domains"),
        (tenant(domains=[]), "domains"),
        (tenant(pools=[]), "pools"),
        (tenant(pools=["../etc"]), "pools"),
        (tenant(pools=["bulk", "bulk"]), "pools"),
        (tenant(smtp={"app": {"password": "hunter2"}}), "never a password"),
        (tenant(smtp={"my app": {"password": HASH}}), "not a user name"),
        (tenant(api_keys=[{"id": "short", "hash": digest_of("x")}]), "api_keys"),
        (tenant(api_keys=[{"id": "k2026a", "hash": "plain"}]), "api_keys"),
        (
            tenant(api_keys=[{"id": "k2026a", "hash": digest_of("a")}] * 2),
            "api key id is used twice",
        ),
        (tenant(quotas={"per_hour": 0}), "quotas.per_hour"),
        (tenant(colour="red"), "colour"),
        (
            tenant(
                webhooks=[
                    {
                        "id": "w",
                        "url": "ftp://x.test/",
                        "events": ["delivered"],
                        "secrets": [SECRET],
                    }
                ]
            ),
            "http",
        ),
        (
            tenant(
                webhooks=[
                    {"id": "w", "url": "https://x.test/", "events": ["nope"], "secrets": [SECRET]}
                ]
            ),
            "events",
        ),
    ],
)
def test_wrong_tenants_are_refused_naming_tenant_and_field(spec: Any, names: str) -> None:
    with pytest.raises(TenancyError, match="tenant 'acme'") as caught:
        parse_tenants({"acme": spec})
    assert names in str(caught.value)


@pytest.mark.parametrize("name", ["", "a b", "-x", "a/b"])
def test_a_tenant_name_is_a_scope_name(name: str) -> None:
    with pytest.raises(TenancyError):
        parse_tenants({name: tenant()})


@pytest.mark.parametrize(
    "secret",
    [
        "k" * 40,  # no prefix
        "whsec_not*base64",
        "whsec_" + base64.b64encode(b"short").decode(),
        "whsec_" + base64.b64encode(b"x" * 65).decode(),
    ],
)
def test_webhook_secret_format(secret: str) -> None:
    with pytest.raises(ValueError, match="webhook secret"):
        webhook_secret_bytes(secret)
    spec = tenant(
        webhooks=[
            {"id": "w", "url": "https://x.test/", "events": ["delivered"], "secrets": [secret]}
        ]
    )
    with pytest.raises(TenancyError, match="webhooks"):
        parse_tenants({"acme": spec})


@pytest.mark.parametrize(
    ("first", "second", "what"),
    [
        (
            {"api_keys": [{"id": "k2026a", "hash": digest_of("a")}]},
            {"api_keys": [{"id": "k2026a", "hash": digest_of("b")}]},
            "api key id 'k2026a'",
        ),
        (
            {"smtp": {"app": {"password": HASH}}},
            {"smtp": {"app": {"password": HASH}}},
            "SMTP user .app.",
        ),
    ],
)
def test_a_key_id_or_smtp_user_finds_one_tenant(
    first: dict[str, Any], second: dict[str, Any], what: str
) -> None:
    data = {
        "acme": tenant(**first),
        "globex": tenant(domains=["globex.test"], **second),
    }
    with pytest.raises(TenancyError, match=f"{what} belongs to both 'acme' and 'globex'"):
        parse_tenants(data)


@pytest.mark.parametrize(
    ("acme", "globex", "overlap"),
    [
        (["acme.test"], ["acme.test"], True),
        (["ACME.test."], ["acme.test"], True),
        (["*.acme.test"], ["eu.acme.test"], True),
        (["*.acme.test"], ["*.eu.acme.test"], True),
        (["*.eu.acme.test"], ["*.acme.test"], True),
        (["*.acme.test"], ["acme.test"], False),  # a wildcard is the subdomains only
        (["acme.test"], ["globex.test", "*.globex.test"], False),
        (["*.acme.test"], ["*.notacme.test"], False),
    ],
)
def test_a_sender_domain_belongs_to_one_tenant(
    acme: list[str], globex: list[str], overlap: bool
) -> None:
    data = {"acme": tenant(domains=acme), "globex": tenant(domains=globex)}
    if overlap:
        with pytest.raises(TenancyError, match="belongs to both 'acme' and 'globex'"):
            parse_tenants(data)
    else:
        assert set(parse_tenants(data)) == {"acme", "globex"}
