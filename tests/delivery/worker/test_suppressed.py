"""Suppression at send time without Kafka: the recipients a message's scopes suppress are not
sent, each gets a `suppressed` event (acknowledged before the send) and no DSN, the rest goes on;
a record with every recipient suppressed finishes untried."""

from __future__ import annotations

from typing import Any

from aiokafka import TopicPartition
from support.attempts import attempts_for as support_attempts
from support.delivery_worker import FakeTransport, accept_all

from mailsluice.contracts.envelope import Envelope
from mailsluice.contracts.events import EventType, decode_event
from mailsluice.contracts.suppressions import (
    GLOBAL,
    Scope,
    ScopeKind,
    Suppression,
    encode_suppression,
    suppression_key,
)
from mailsluice.contracts.topics import EVENTS_TOPIC
from mailsluice.delivery.shaping.scheduler import Job
from mailsluice.delivery.worker.attempts import Item
from mailsluice.delivery.worker.suppressed import screen_envelope
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.metrics.delivery import Delivery as m
from mailsluice.suppression.store import SuppressionStore

ACME = Scope(ScopeKind.TENANT, tenant="acme")
NEWS = Scope(ScopeKind.LIST, tenant="acme", list_id="news")


def store_with(*entries: tuple[str, Scope], undecodable: tuple[str, Scope] | None = None) -> Any:
    store = SuppressionStore(KafkaSettings())
    for address, scope in entries:
        entry = Suppression(address=address, reason="complaint", scope=scope.label)
        store._apply(suppression_key(address, scope), encode_suppression(entry))
    if undecodable is not None:
        store._apply(suppression_key(*undecodable), b"{not json")
    return store


def env_of(*rcpts: str, pool: str, tenant: str = "acme", list_id: str = "news") -> Envelope:
    return Envelope(
        queue_id="Q1",
        pool=pool,
        sender="news@shop.example",
        recipients=rcpts,
        routing_key="x.example",
        received_at=0.0,
        tenant=tenant,
        list_id=list_id,
        message_key="K1",
    )


def attempts_for(pool: str, transport: FakeTransport, finished: list[Item], store: Any) -> Any:
    attempts = support_attempts(
        pool, transport, finished, build_dsn=lambda *a, **k: b"dsn", wall=1000.0
    )
    attempts.screen.lookup = store
    return attempts


def counted(pool: str, kind: str) -> float:
    return float(m.SUPPRESSED.labels(pool, kind)._value.get())


def test_screen_envelope_keeps_order_and_names_the_entries() -> None:
    store = store_with(("b@x.example", GLOBAL), ("d@x.example", NEWS))
    env = env_of("a@x.example", "B@x.example", "c@x.example", "d@x.example", pool="p")
    kept, hits = screen_envelope(env, store)
    assert kept.recipients == ("a@x.example", "c@x.example")
    assert [(r, e.scope) for r, e in hits] == [
        ("B@x.example", "global"),
        ("d@x.example", NEWS.label),
    ]
    other_list = env.model_copy(update={"list_id": "digest"})
    assert screen_envelope(other_list, store)[0].recipients == (
        "a@x.example",
        "c@x.example",
        "d@x.example",
    )
    clean = env_of("a@x.example", pool="p")
    assert screen_envelope(clean, store)[0] is clean


async def test_suppressed_recipients_are_not_sent_and_get_an_event() -> None:
    pool = "supp-some"
    store = store_with(("b@x.example", ACME), undecodable=("c@x.example", GLOBAL))
    transport = FakeTransport(accept_all)
    finished: list[Item] = []
    attempts = attempts_for(pool, transport, finished, store)
    env = env_of("a@x.example", "b@x.example", "c@x.example", pool=pool)
    item = Item(TopicPartition("q", 0), 0, 1, env, b"Subject: x\r\n\r\nx\r\n")
    await attempts.deliver(Job("x.example", item, 0.0, 0.0))
    assert transport.calls == [("Q1", "a@x.example")]
    assert finished == [item]
    events = [
        decode_event(value) for topic, value, *_ in attempts.producers.sent if topic == EVENTS_TOPIC
    ]
    suppressed = [(e.recipient, e.reason) for e in events if e.type is EventType.SUPPRESSED]
    assert suppressed == [("b@x.example", "tenant:acme"), ("c@x.example", "global")]
    assert [e.type for e in events if e.recipient == "a@x.example"] == [EventType.DELIVERY]
    assert (counted(pool, "tenant"), counted(pool, "global"), counted(pool, "list")) == (1, 1, 0)


async def test_a_record_with_every_recipient_suppressed_finishes_untried() -> None:
    pool = "supp-all"
    store = store_with(("a@x.example", NEWS), ("b@x.example", GLOBAL))
    transport = FakeTransport(accept_all)
    finished: list[Item] = []
    attempts = attempts_for(pool, transport, finished, store)
    env = env_of("a@x.example", "b@x.example", pool=pool).model_copy(update={"attempt": 2})
    item = Item(TopicPartition("q", 0), 0, 1, env, b"Subject: x\r\n\r\nx\r\n")
    await attempts.deliver(Job("x.example", item, 0.0, 0.0))
    assert transport.calls == []
    assert finished == [item]
    sent = attempts.producers.sent
    assert {topic for topic, *_ in sent} == {EVENTS_TOPIC}  # no DSN, no retry
    events = [decode_event(value) for _topic, value, *_ in sent]
    assert [(e.type, e.recipient, e.attempt) for e in events] == [
        (EventType.SUPPRESSED, "a@x.example", 2),
        (EventType.SUPPRESSED, "b@x.example", 2),
    ]
    assert events[0].text == "suppressed: complaint" and events[0].message_key == "K1"
    assert counted(pool, "list") == 1
    assert m.ATTEMPTS.labels(pool, "delivered")._value.get() == 0


async def test_without_a_list_nothing_is_checked() -> None:
    transport = FakeTransport(accept_all)
    finished: list[Item] = []
    attempts = attempts_for("supp-off", transport, finished, None)
    env = env_of("a@x.example", pool="supp-off")
    item = Item(TopicPartition("q", 0), 0, 1, env, b"Subject: x\r\n\r\nx\r\n")
    await attempts.deliver(Job("x.example", item, 0.0, 0.0))
    assert transport.calls == [("Q1", "a@x.example")]
