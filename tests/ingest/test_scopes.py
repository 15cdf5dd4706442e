"""Tenant and list of a message at ingest, without sockets or Kafka: the users file's `tenant`,
the trusted network's, the List-Id, the scopes judged at RCPT and the list at the end of DATA."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from support.ingest import ingest_settings

from mailsluice.contracts.events import EventType
from mailsluice.contracts.suppressions import (
    GLOBAL,
    Scope,
    Suppression,
    encode_suppression,
    scopes_for,
    suppression_key,
)
from mailsluice.ingest import replies
from mailsluice.ingest.auth import CredentialsError, hash_password, parse_users
from mailsluice.ingest.plan import Client, PoolPolicy, Transaction, plan_message
from mailsluice.ingest.scopes import list_id_of, screen_list, tenant_of
from mailsluice.ingest.verdicts import judge_recipient, unverified_mx
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.policy.rollup import default_rollup
from mailsluice.suppression.store import SuppressionStore

HASH = hash_password("x", salt=b"\0" * 16)
NEWS = Scope.parse("list:acme/news")


def store_with(*entries: tuple[str, Scope]) -> SuppressionStore:
    store = SuppressionStore(KafkaSettings())
    for address, scope in entries:
        value = encode_suppression(Suppression(address=address, scope=scope.label))
        store._apply(suppression_key(address, scope), value)
    return store


def test_a_users_tenant_defaults_to_its_name() -> None:
    users = parse_users(
        {"app": {"password": HASH, "tenant": "acme.corp"}, "other": {"password": HASH}},
        "default",
    )
    assert (users["app"].tenant, users["other"].tenant) == ("acme.corp", "")
    assert tenant_of(users["app"], trusted_network="", trusted_tenant="t") == "acme.corp"
    assert tenant_of(users["other"], trusted_network="", trusted_tenant="t") == "other"


@pytest.mark.parametrize("tenant", ["", "a b", "a/b", "-lead", 7, " acme"])
def test_a_tenant_must_be_a_scope_name(tenant: object) -> None:
    with pytest.raises(CredentialsError, match="tenant"):
        parse_users({"app": {"password": HASH, "tenant": tenant}}, "default")


def test_a_trusted_network_has_the_configured_tenant_if_any() -> None:
    assert tenant_of(None, trusted_network="127.0.0.0/8", trusted_tenant="acme") == "acme"
    assert tenant_of(None, trusted_network="127.0.0.0/8", trusted_tenant="") == ""
    assert tenant_of(None, trusted_network="", trusted_tenant="acme") == ""  # a stranger
    assert ingest_settings(trusted_tenant="acme").trusted_tenant == "acme"
    with pytest.raises(ValidationError, match="scope"):
        ingest_settings(trusted_tenant="a|b")


@pytest.mark.parametrize(
    ("header", "list_id"),
    [
        (b"List-Id: Acme News <news.acme.example>\r\n", "news.acme.example"),
        (b"list-id:<news>\r\n", "news"),
        (b'List-ID: "a <b>" <\r\n real.list >\r\n', "real.list"),  # folded; the last <>
        (b"List-Id: news.acme.example\r\n", ""),  # no angle brackets
        (b"List-Id: <news list>\r\n", ""),  # not a scope name
        (b"List-Id: <>\r\n", ""),
        (b"X-List-Id: <news>\r\n", ""),
        (b"List-Id: <one>\r\nList-Id: <two>\r\n", "one"),
    ],
)
def test_list_id_of(header: bytes, list_id: str) -> None:
    data = b"From: a@b.example\r\n" + header + b"Subject: x\r\n\r\nList-Id: <body>\r\n"
    assert list_id_of(data) == list_id


def test_no_list_id_in_the_body() -> None:
    assert list_id_of(b"Subject: x\r\n\r\nList-Id: <body>\r\n") == ""


async def test_rcpt_judges_the_scopes_known_then() -> None:
    store = store_with(
        ("t@x.example", Scope.parse("tenant:acme")),
        ("d@x.example", Scope.parse("domain:shop.example")),
        ("l@x.example", NEWS),
    )
    scopes = scopes_for(tenant="acme", sender="me@shop.example")

    async def reason(address: str, scopes: tuple[Scope, ...]) -> str:
        verdict = await judge_recipient(
            address,
            accepted_so_far=0,
            max_recipients=10,
            is_suppressed=store.suppressed,
            mx_lookup=unverified_mx,
            rollup=default_rollup(),
            scopes=scopes,
        )
        if verdict.reason:
            assert verdict.reply == replies.S550_SUPPRESSED
        return verdict.reason

    assert await reason("T@x.example", scopes) == "suppressed"
    assert await reason("d@x.example", scopes) == "suppressed"
    assert await reason("l@x.example", scopes) == ""  # the list is not known at RCPT
    assert await reason("t@x.example", scopes_for(tenant="beta", sender="me@shop.example")) == ""
    assert await reason("t@x.example", (GLOBAL,)) == ""


def plan_for(message: bytes, tenant: str, recipients: dict[str, str], store: SuppressionStore):
    txn = Transaction("QID", 0.0, 1000.0, routing=dict(recipients), sender="me@shop.example")
    client = Client(helo="c.test", peer_ip="127.0.0.1", protocol="ESMTP", tenant=tenant)
    pools = PoolPolicy(
        "X-Mailsluice-Pool", "default", frozenset({"default"}), frozenset({"default"})
    )
    plan = plan_message(txn, message, client, hostname="mx.test", pools=pools, now=1000.0)
    return screen_list(plan, store.suppressed, now=1000.0)


def test_records_name_tenant_and_list_and_leave_out_the_lists_suppressed() -> None:
    store = store_with(("l@b.example", NEWS), ("k@c.example", Scope.parse("list:beta/news")))
    message = b"From: me@shop.example\r\nList-Id: News <news>\r\nSubject: x\r\n\r\nbody\r\n"
    routing = {"k@b.example": "b.example", "l@b.example": "b.example", "k@c.example": "c.example"}
    plan = plan_for(message, "acme", routing, store)
    assert [
        (r.envelope.recipients, r.envelope.tenant, r.envelope.list_id) for r in plan.records
    ] == [
        (("k@b.example",), "acme", "news"),
        (("k@c.example",), "acme", "news"),
    ]
    assert plan.outcome.reply.startswith("250 ")
    suppressed = [e for e in plan.outcome.events if e.type is EventType.SUPPRESSED]
    assert [(e.recipient, e.reason, e.queue_id, e.pool) for e in suppressed] == [
        ("l@b.example", "list:acme/news", "QID", "default")
    ]
    # the reception counts the queued recipients; campaign stats count the suppressed apart
    (reception,) = [e for e in plan.outcome.events if e.type is EventType.RECEPTION]
    assert reception.recipients == 2


def test_every_recipient_suppressed_for_the_list_queues_nothing() -> None:
    store = store_with(("l@b.example", NEWS))
    message = b"List-Id: <news>\r\nSubject: x\r\n\r\nbody\r\n"
    plan = plan_for(message, "acme", {"l@b.example": "b.example"}, store)
    assert plan.records == () and not plan.writes
    assert plan.outcome.reply.startswith("250 ")
    assert [e.type for e in plan.outcome.events] == [EventType.RECEPTION, EventType.SUPPRESSED]


def test_without_tenant_or_list_id_there_is_no_list_scope() -> None:
    store = store_with(("l@b.example", NEWS))
    listed = b"List-Id: <news>\r\nSubject: x\r\n\r\nbody\r\n"
    for message, tenant in [(listed, ""), (b"Subject: x\r\n\r\nbody\r\n", "acme")]:
        plan = plan_for(message, tenant, {"l@b.example": "b.example"}, store)
        assert [r.envelope.recipients for r in plan.records] == [("l@b.example",)]
        assert plan.records[0].envelope.tenant == tenant
