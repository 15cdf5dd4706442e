"""Campaign and tags over SMTP without sockets: X-Mailsluice-Campaign and X-Mailsluice-Tags set
the envelope's campaign and tags, leave the message, and travel in the reception event and the
suppressed events of the list screen; a bad value refuses the message (550 5.6.0)."""

from __future__ import annotations

import pytest
from support.ingest import TRACE

from mailsluice.contracts.events import EventType
from mailsluice.contracts.suppressions import (
    Scope,
    Suppression,
    encode_suppression,
    suppression_key,
)
from mailsluice.ingest import replies
from mailsluice.ingest.controls import Labels, labels_of
from mailsluice.ingest.message import prepare_message
from mailsluice.ingest.plan import Client, Plan, PoolPolicy, Transaction, plan_message
from mailsluice.ingest.scopes import screen_list
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.suppression.store import SuppressionStore

POOLS = PoolPolicy("X-Mailsluice-Pool", "default", frozenset({"default"}), frozenset({"default"}))


def plan_for(header: bytes, store: SuppressionStore | None = None) -> Plan:
    txn = Transaction(
        "QID",
        0.0,
        1000.0,
        routing={"a@b.example": "b.example", "l@c.example": "c.example"},
        sender="me@acme.test",
    )
    client = Client(helo="c.test", peer_ip="192.0.2.1", protocol="ESMTPA", tenant="acme")
    message = b"From: me@acme.test\r\nList-Id: <news>\r\n" + header + b"Subject: x\r\n\r\nbody\r\n"
    plan = plan_message(txn, message, client, hostname="mx.test", pools=POOLS, now=1000.0)
    return screen_list(plan, (store or SuppressionStore(KafkaSettings())).suppressed, now=1000.0)


def test_the_headers_become_labels_and_leave_the_message() -> None:
    raw = (
        b"X-Mailsluice-Campaign: spring-2026\r\n"
        b"X-Mailsluice-Tags: news, de ,  vip\r\n"
        b"Subject: x\r\n"
        b"x-mailsluice-tags: weekly\r\n"
        b"\r\nX-Mailsluice-Campaign: in the body stays\r\n"
    )
    prepared = prepare_message(raw, TRACE, pool_header="X-Mailsluice-Pool")
    assert labels_of(prepared, "acme") == Labels(
        "acme", "spring-2026", ("news", "de", "vip", "weekly")
    )
    header, _, body = prepared.stamped("QID", "default").partition(b"\r\n\r\n")
    assert b"mailsluice-campaign" not in header.lower() and b"mailsluice-tags" not in header.lower()
    assert body == b"X-Mailsluice-Campaign: in the body stays\r\n"


def test_without_the_headers_no_campaign_and_no_tags() -> None:
    prepared = prepare_message(
        b"Subject: x\r\n\r\nbody\r\n", TRACE, pool_header="X-Mailsluice-Pool"
    )
    assert labels_of(prepared, "") == Labels()


def test_records_and_events_carry_tenant_campaign_and_tags() -> None:
    store = SuppressionStore(KafkaSettings())
    news = Scope.parse("list:acme/news")
    store._apply(
        suppression_key("l@c.example", news),
        encode_suppression(Suppression(address="l@c.example", scope=news.label)),
    )
    plan = plan_for(b"X-Mailsluice-Campaign: spring\r\nX-Mailsluice-Tags: a,b\r\n", store)
    assert plan.outcome.reply.startswith("250 ")
    (record,) = plan.records
    env = record.envelope
    assert (env.tenant, env.campaign, env.tags, env.recipients) == (
        "acme",
        "spring",
        ("a", "b"),
        ("a@b.example",),
    )
    assert b"X-Mailsluice-Campaign" not in record.value
    kinds = {e.type: e for e in plan.outcome.events}
    for kind in (EventType.RECEPTION, EventType.SUPPRESSED):
        event = kinds[kind]
        assert (event.tenant, event.campaign, event.tags) == ("acme", "spring", ("a", "b")), kind


@pytest.mark.parametrize(
    "header",
    [
        b"X-Mailsluice-Campaign: two words\r\n",
        b"X-Mailsluice-Campaign: -dash-first\r\n",
        b"X-Mailsluice-Campaign: " + b"c" * 129 + b"\r\n",
        b"X-Mailsluice-Tags: a,a\r\n",
        b"X-Mailsluice-Tags: " + b",".join(b"t%d" % i for i in range(11)) + b"\r\n",
        b"X-Mailsluice-Tags: " + b"t" * 65 + b"\r\n",
        b"X-Mailsluice-Tags: caf\xc3\xa9\r\n",  # printable ASCII only
    ],
)
def test_a_bad_campaign_or_tag_refuses_the_message(header: bytes) -> None:
    plan = plan_for(header)
    assert plan.records == () and not plan.writes
    assert plan.outcome.reply.startswith("550 5.6.0 X-Mailsluice-Campaign or X-Mailsluice-Tags")
    rejections = [e for e in plan.outcome.events if e.type is EventType.REJECTION]
    assert {e.reason for e in rejections} == {"bad_labels"} and len(rejections) == 2
    assert replies.code_of(plan.outcome.reply) == "550"
