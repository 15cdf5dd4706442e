"""Each queue record of an SMTP message carries the highest engagement grade of its recipients
for the message's tenant (ingest/grading.py over the engagement table's lookup)."""

from __future__ import annotations

from mailsluice.contracts.engagement import (
    ACTIVE,
    DAY_S,
    LAPSED,
    NEW,
    UNENGAGED,
    Engagement,
    encode_engagement,
    engagement_key,
)
from mailsluice.engagement.store import Table, apply_record, highest_grade
from mailsluice.ingest.grading import graded
from mailsluice.ingest.plan import Client, PoolPolicy, Transaction, plan_message

NOW = 1_800_000_000.0


def table_of(*records: Engagement) -> Table:
    table: Table = {}
    for r in records:
        apply_record(table, engagement_key(r.tenant, r.address), encode_engagement(r))
    return table


TABLE = table_of(
    Engagement(tenant="acme", address="fan@b.example", last_engaged=NOW - DAY_S),
    Engagement(tenant="acme", address="old@b.example", last_engaged=NOW - 200 * DAY_S),
    Engagement(tenant="acme", address="quiet@c.example", first_delivered=NOW, deliveries=20),
    Engagement(tenant="beta", address="quiet@d.example", last_engaged=NOW - DAY_S),
)


def grade(tenant: str, recipients: object) -> int:
    return highest_grade(TABLE, tenant, recipients, NOW)  # type: ignore[arg-type]


def test_the_table_grades_by_tenant_and_address() -> None:
    assert grade("acme", ["FAN@b.example"]) == ACTIVE
    assert grade("acme", ["quiet@c.example"]) == UNENGAGED
    assert grade("acme", ["quiet@c.example", "old@b.example"]) == LAPSED
    assert grade("acme", ["quiet@d.example"]) == NEW  # beta's engaged address: new to acme
    assert grade("beta", []) == 0


def test_a_tombstone_or_an_undecodable_record_leaves_the_address_ungraded_as_new() -> None:
    table = dict(TABLE)
    apply_record(table, b"acme|fan@b.example", None)
    apply_record(table, b"acme|old@b.example", b'{"v": 99, "address": "old@b.example"}')
    assert highest_grade(table, "acme", ["fan@b.example", "old@b.example"], NOW) == NEW


def test_each_record_of_a_plan_gets_its_recipients_grade() -> None:
    routing = {"fan@b.example": "b.example", "quiet@c.example": "c.example"}
    txn = Transaction("QID", 0.0, NOW, routing=routing, sender="me@acme.test")
    client = Client(helo="c.test", peer_ip="127.0.0.1", protocol="ESMTP", tenant="acme")
    pools = PoolPolicy(
        "X-Mailsluice-Pool", "default", frozenset({"default"}), frozenset({"default"})
    )
    message = b"From: me@acme.test\r\nSubject: x\r\n\r\nbody\r\n"
    plan = plan_message(txn, message, client, hostname="mx.test", pools=pools, now=NOW)
    assert [r.envelope.grade for r in plan.records] == [0, 0]
    assert [(r.envelope.recipients, r.envelope.grade) for r in graded(plan, grade).records] == [
        (("fan@b.example",), ACTIVE),
        (("quiet@c.example",), UNENGAGED),
    ]
