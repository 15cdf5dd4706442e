"""Engagement records and grades (contracts/engagement.py)."""

from __future__ import annotations

import json

import pytest

from mailsluice.contracts.engagement import (
    ACTIVE,
    DAY_S,
    LAPSED,
    NEW,
    NOT_GRADED,
    RECENT,
    UNENGAGED,
    Engagement,
    decode_engagement,
    encode_engagement,
    engagement_key,
    grade,
    parse_engagement_key,
)
from mailsluice.contracts.versioning import NewerSchema

NOW = 1_800_000_000.0


def test_a_record_reads_back_and_its_key_names_tenant_and_address() -> None:
    record = Engagement(tenant="acme", address="a@x.test", deliveries=3, first_delivered=5.0)
    assert decode_engagement(encode_engagement(record)) == record
    assert engagement_key("acme", " A@X.test ") == b"acme|a@x.test"
    assert parse_engagement_key(b"acme|a@x.test") == ("acme", "a@x.test")
    assert parse_engagement_key("|a@x.test") == ("", "a@x.test")


def test_a_newer_record_is_refused_and_a_bad_key_too() -> None:
    raw = json.dumps({"v": 2, "address": "a@x.test"}).encode()
    with pytest.raises(NewerSchema):
        decode_engagement(raw)
    with pytest.raises(ValueError, match="not an engagement key"):
        parse_engagement_key(b"no-separator")


def record(**fields: float) -> Engagement:
    return Engagement(address="a@x.test", **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("found", "expected"),
    [
        (None, NEW),
        (record(first_delivered=NOW - 5 * DAY_S, deliveries=2), NEW),
        (record(first_delivered=NOW - 5 * DAY_S, deliveries=5), UNENGAGED),
        (record(last_engaged=NOW - 10 * DAY_S, deliveries=9), ACTIVE),
        (record(last_engaged=NOW - 60 * DAY_S, deliveries=9), RECENT),
        (record(last_engaged=NOW - 120 * DAY_S, deliveries=1), LAPSED),
        (record(last_engaged=NOW - 120 * DAY_S, deliveries=6), UNENGAGED),
        (record(first_delivered=NOW - DAY_S, deliveries=1, unengaged_at=NOW - DAY_S), UNENGAGED),
    ],
)
def test_grades(found: Engagement | None, expected: int) -> None:
    assert grade(found, NOW) == expected


def test_more_engaged_grades_higher_and_zero_is_not_graded() -> None:
    assert ACTIVE > RECENT > LAPSED > NEW > UNENGAGED > NOT_GRADED == 0
