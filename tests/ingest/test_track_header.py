"""Tracking asked for over SMTP without sockets: X-Mailsluice-Track (off, opens, clicks, all)
leaves the message and sets the envelope's tracking, else the tenant's default does (a tenant's
SMTP user carries it); a bad value refuses the message (550 5.6.0)."""

from __future__ import annotations

from mailsluice.ingest import replies
from mailsluice.ingest.plan import Client, Plan, PoolPolicy, Transaction, plan_message
from mailsluice.ingest.tenants import tenant_user
from mailsluice.tenancy.model import parse_tenants

POOLS = PoolPolicy("X-Mailsluice-Pool", "default", frozenset({"default"}), frozenset({"default"}))


def plan_for(header: bytes, tenant_default: str = "") -> Plan:
    txn = Transaction("QID", 0.0, 1000.0, routing={"a@b.example": "b.example"}, sender="m@a.test")
    client = Client(
        helo="c.test",
        peer_ip="192.0.2.1",
        protocol="ESMTPA",
        tenant="acme",
        tracking=tenant_default,
    )
    message = b"From: m@a.test\r\n" + header + b"Subject: x\r\n\r\nX-Mailsluice-Track: off\r\n"
    return plan_message(txn, message, client, hostname="mx.test", pools=POOLS, now=1000.0)


def test_the_header_sets_the_tracking_and_leaves_the_message() -> None:
    for value, expected in ((b"clicks", "clicks"), (b" ALL ", "all"), (b"off", "off")):
        plan = plan_for(b"X-Mailsluice-Track:" + value + b"\r\n", tenant_default="opens")
        assert plan.outcome.reply.startswith("250 "), plan.outcome.reply
        (record,) = plan.records
        assert record.envelope.tracking == expected
        header, _, body = record.value.partition(b"\r\n\r\n")
        assert b"mailsluice-track" not in header.lower()
        assert body == b"X-Mailsluice-Track: off\r\n"  # the body is never read for it


def test_without_the_header_the_tenants_default_else_the_pools() -> None:
    assert [r.envelope.tracking for r in plan_for(b"", "opens").records] == ["opens"]
    assert [r.envelope.tracking for r in plan_for(b"").records] == [""]


def test_a_bad_value_is_refused_with_550_5_6_0() -> None:
    plan = plan_for(b"X-Mailsluice-Track: sometimes\r\n")
    assert plan.outcome.reply == replies.S550_BAD_TRACK
    assert plan.outcome.reply.startswith("550 5.6.0 ") and not plan.records


def test_a_tenants_smtp_user_carries_its_default() -> None:
    tenants = parse_tenants(
        {
            "acme": {
                "pools": ["default"],
                "domains": ["a.test"],
                "smtp": {"app": {"password": "scrypt$x"}},
                "tracking": "clicks",
            },
            "beta": {
                "pools": ["default"],
                "domains": ["b.test"],
                "smtp": {"b": {"password": "scrypt$y"}},
            },
        }
    )
    assert tenant_user(tenants["acme"], "app").tracking == "clicks"
    assert tenant_user(tenants["beta"], "b").tracking == ""
