"""Suppression scopes and record keys (contracts/suppressions.py)."""

from __future__ import annotations

import pytest

from mailsluice.contracts.suppressions import (
    GLOBAL,
    Scope,
    ScopeKind,
    Suppression,
    decode_suppression,
    encode_suppression,
    parse_key,
    scopes_for,
    suppression_key,
)


@pytest.mark.parametrize(
    ("label", "scope"),
    [
        ("global", GLOBAL),
        ("tenant:acme", Scope(ScopeKind.TENANT, tenant="acme")),
        ("domain:news.acme.test", Scope(ScopeKind.DOMAIN, domain="news.acme.test")),
        ("list:acme/weekly-digest", Scope(ScopeKind.LIST, tenant="acme", list_id="weekly-digest")),
    ],
)
def test_a_label_names_one_scope_and_back(label: str, scope: Scope) -> None:
    assert Scope.parse(label) == scope
    assert scope.label == label


@pytest.mark.parametrize(
    "label", ["", "tenant:", "list:acme", "domain:Bad_Domain", "user:x", "a|b"]
)
def test_anything_else_is_refused(label: str) -> None:
    with pytest.raises(ValueError, match="not a suppression scope"):
        Scope.parse(label)


def test_a_global_key_is_the_address_and_a_scoped_key_parses_back() -> None:
    assert suppression_key(" Bob@Example.COM ") == b"bob@example.com"
    weekly = Scope(ScopeKind.LIST, tenant="acme", list_id="weekly")
    key = suppression_key("Bob@Example.com", weekly)
    assert key == b"list:acme/weekly|bob@example.com"
    assert parse_key(key.decode()) == (weekly, "bob@example.com")
    assert parse_key("bob@example.com") == (GLOBAL, "bob@example.com")
    # no label before the bar: a (strange) global key, never a scope
    assert parse_key("odd|bob@example.com") == (GLOBAL, "odd|bob@example.com")


def test_a_message_falls_in_the_scopes_it_names() -> None:
    assert scopes_for() == (GLOBAL,)
    labels = [s.label for s in scopes_for(tenant="acme", sender="news@Acme.TEST", list_id="w")]
    assert labels == ["global", "tenant:acme", "domain:acme.test", "list:acme/w"]
    # a list without a tenant is not a scope: list names are the tenant's own
    assert [s.label for s in scopes_for(sender="", list_id="w")] == ["global"]


def test_an_old_record_reads_as_global() -> None:
    old = b'{"v":1,"address":"bob@example.com","reason":"manual","source":"cli","ts":1.0}'
    entry = decode_suppression(old)
    assert Scope.parse(entry.scope) == GLOBAL
    scoped = Suppression(address="bob@example.com", scope="tenant:acme")
    assert Scope.parse(decode_suppression(encode_suppression(scoped)).scope).tenant == "acme"
