"""Scoped suppressions in the store, without Kafka: the table read from records keyed as the
contract says, what `match` answers for a message's scopes, and undecodable records."""

from __future__ import annotations

from mailsluice.contracts.suppressions import (
    GLOBAL,
    Scope,
    ScopeKind,
    Suppression,
    encode_suppression,
    scopes_for,
    suppression_key,
)
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.suppression.store import SuppressionStore, apply_record

ACME = Scope(ScopeKind.TENANT, tenant="acme")
SHOP = Scope(ScopeKind.DOMAIN, domain="shop.example")
NEWS = Scope(ScopeKind.LIST, tenant="acme", list_id="news")


def value(address: str, scope: Scope = GLOBAL, reason: str = "manual") -> bytes:
    return encode_suppression(Suppression(address=address, reason=reason, scope=scope.label))


def table_of(*records: tuple[bytes, bytes | None]) -> SuppressionStore:
    """A store that is never started, its table filled by the records as if read."""
    store = SuppressionStore(KafkaSettings())
    for key, raw in records:
        store._apply(key, raw)
    return store


def test_each_scope_suppresses_only_the_messages_that_fall_in_it() -> None:
    store = table_of(
        (suppression_key("g@x.example"), value("g@x.example")),
        (suppression_key("t@x.example", ACME), value("t@x.example", ACME)),
        (suppression_key("d@x.example", SHOP), value("d@x.example", SHOP)),
        (suppression_key("l@x.example", NEWS), value("l@x.example", NEWS)),
    )
    news = scopes_for(tenant="acme", sender="me@shop.example", list_id="news")
    other = scopes_for(tenant="beta", sender="me@other.example", list_id="news")
    for address, label in [
        ("g@x.example", "global"),
        ("t@x.example", "tenant:acme"),
        ("d@x.example", "domain:shop.example"),
        ("l@x.example", "list:acme/news"),
    ]:
        found = store.match(address.upper(), news)
        assert found is not None and found.scope == label, address
    assert [a for a in ("g", "t", "d", "l") if store.match(f"{a}@x.example", other)] == ["g"]
    # the same tenant's other list, and a message with no list, are not the list's
    assert store.match("l@x.example", scopes_for(tenant="acme", list_id="digest")) is None
    assert store.match("l@x.example", scopes_for(tenant="acme")) is None


def test_contains_and_get_ask_the_global_scope_only() -> None:
    store = table_of((suppression_key("t@x.example", ACME), value("t@x.example", ACME)))
    assert not store.contains("t@x.example") and store.get("t@x.example") is None
    assert store.suppressed("t@x.example", [ACME])
    assert not store.suppressed("t@x.example", [GLOBAL, SHOP])


def test_the_widest_scope_answers_first() -> None:
    store = table_of(
        (suppression_key("a@x.example", NEWS), value("a@x.example", NEWS, reason="unsubscribe")),
        (suppression_key("a@x.example"), value("a@x.example", reason="hard-bounce")),
    )
    found = store.match("a@x.example", scopes_for(tenant="acme", list_id="news"))
    assert found is not None and (found.scope, found.reason) == ("global", "hard-bounce")


def test_a_tombstone_lifts_its_own_scope_only() -> None:
    store = table_of(
        (suppression_key("a@x.example"), value("a@x.example")),
        (suppression_key("a@x.example", ACME), value("a@x.example", ACME)),
        (suppression_key("a@x.example", ACME), None),
    )
    assert store.contains("a@x.example")
    assert [e.scope for e in store.entries()] == ["global"]


def test_an_undecodable_record_suppresses_in_the_scope_its_key_names() -> None:
    store = table_of((suppression_key("u@x.example", NEWS), b"\xff not json"))
    found = store.match("u@x.example", scopes_for(tenant="acme", list_id="news"))
    assert found is not None
    assert (found.scope, found.reason, found.address) == (
        "list:acme/news",
        "unreadable",
        "u@x.example",
    )
    assert not store.contains("u@x.example")
    assert store.match("u@x.example", scopes_for(tenant="acme")) is None


def test_the_key_names_the_scope_whatever_the_value_says() -> None:
    # A value copied from another scope (or written before scopes) still lands where the key
    # says, so a tombstone of that key removes it.
    table: dict[str, Suppression] = {}
    assert apply_record(table, suppression_key("a@x.example", ACME), value("a@x.example"))
    assert list(table) == ["tenant:acme|a@x.example"]
    assert table["tenant:acme|a@x.example"].scope == "tenant:acme"
    assert apply_record(table, b"tenant:acme|A@X.example", None)
    assert table == {}


def test_a_key_without_a_valid_label_is_a_global_address() -> None:
    table: dict[str, Suppression] = {}
    apply_record(table, b"nolabel|a@x.example", value("a@x.example"))
    apply_record(table, b"tenant:|b@x.example", value("b@x.example"))
    assert sorted(table) == ["nolabel|a@x.example", "tenant:|b@x.example"]
    assert all(e.scope == "global" for e in table.values())


def test_entries_by_address_global_first() -> None:
    store = table_of(
        (suppression_key("z@x.example", NEWS), value("z@x.example", NEWS)),
        (suppression_key("b@x.example"), value("b@x.example")),
        (suppression_key("a@x.example", ACME), value("a@x.example", ACME)),
        (suppression_key("a@x.example"), value("a@x.example")),
    )
    assert [(e.scope, e.address) for e in store.entries()] == [
        ("global", "a@x.example"),
        ("tenant:acme", "a@x.example"),
        ("global", "b@x.example"),
        ("list:acme/news", "z@x.example"),
    ]
    assert [e.address for e in store.entries(ACME)] == ["a@x.example"]
    assert [e.address for e in store.entries(GLOBAL)] == ["a@x.example", "b@x.example"]
