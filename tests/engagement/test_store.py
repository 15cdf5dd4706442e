"""The engagement store's packed table (engagement/store.py): every field of a record comes
back exactly, a tenant's records are its own only, and keys are found whatever their case."""

from __future__ import annotations

from mailsluice.contracts.engagement import Engagement, encode_engagement, engagement_key
from mailsluice.engagement.store import Table, apply_record, lookup, tenant_records

FULL = Engagement(
    tenant="acme",
    address="fan@b.example",
    first_delivered=1_700_000_000.125,
    last_delivered=1_700_086_400.5,
    last_engaged=1_700_000_100.75,
    deliveries=2**40,
    unengaged_at=1_700_090_000.0,
    ts=0.0,
)


def table_of(*records: Engagement) -> Table:
    table: Table = {}
    for r in records:
        apply_record(table, engagement_key(r.tenant, r.address), encode_engagement(r))
    return table


def test_a_record_comes_back_whole() -> None:
    table = table_of(FULL)
    assert lookup(table, "acme", " Fan@B.example ") == FULL
    assert lookup(table, "acm", "fan@b.example") is None
    assert tenant_records(table, "acme") == [FULL]


def test_a_tenant_s_records_are_its_own_even_when_another_s_name_starts_like_it() -> None:
    other = FULL.model_copy(update={"tenant": "acme2"})
    nobody = FULL.model_copy(update={"tenant": "", "address": "x@c.example"})
    table = table_of(FULL, other, nobody)
    assert tenant_records(table, "acme") == [FULL]
    assert tenant_records(table, "acme2") == [other]
    assert tenant_records(table, "") == [nobody]


def test_a_key_in_another_case_is_the_same_address() -> None:
    table = table_of(FULL)
    apply_record(table, b"acme|FAN@B.example", None)
    assert lookup(table, "acme", "fan@b.example") is None
    assert len(table) == 0
