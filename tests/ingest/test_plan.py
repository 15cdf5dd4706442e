"""The plan of a DATA transaction (pure, table-driven), and the one publish step that carries it
out against a real Publisher: Kafka unreachable, Kafka silent, and the real broker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import get_args

import pytest
from support.ingest import queued, uid
from support.kafka_broker import KafkaBroker
from support.loopback import free_port

from mailsluice.contracts.events import EventType
from mailsluice.contracts.topics import EVENTS_TOPIC, queue_topic
from mailsluice.ingest import replies
from mailsluice.ingest.auth import User
from mailsluice.ingest.handler import COUNTERS
from mailsluice.ingest.plan import (
    UNWRITTEN,
    Client,
    Count,
    Metric,
    Note,
    Plan,
    PoolPolicy,
    Transaction,
    plan_feedback,
    plan_message,
)
from mailsluice.ingest.publish import Publisher, publish_plan
from mailsluice.kafka.admin import ensure_topics, standard_topics
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.policy.rollup import load_rollup

QID = "01JDQ8Z5K3M4N5P6Q7R8S9T0VW"
NOW = 1_800_000_123.5
RECEIVED_AT = 1_800_000_000.0
POOLS = PoolPolicy(
    "X-Mailsluice-Pool",
    "default",
    frozenset({"default"}),
    frozenset({"default", "bulk", "vip"}),
)
USER = User("app1", "scrypt$unused", ("bulk", "vip"), "bulk")
TRUSTED = Client("client.test", "127.0.0.1", "ESMTP", None, "127.0.0.0/8")
AUTHENTICATED = Client("app.client.test", "192.0.2.7", "ESMTPSA", USER)
ROUTING = {"a@gmail.com": "google", "b@x.example": "x.example", "c@googlemail.com": "google"}


def txn(sender: str = "s@client.test", routing: dict[str, str] | None = None) -> Transaction:
    return Transaction(QID, 5.0, RECEIVED_AT, dict(routing or ROUTING), sender=sender)


def content(**headers: str) -> bytes:
    lines = [f"{name.replace('_', '-')}: {value}\r\n" for name, value in headers.items()]
    return ("Subject: hi\r\n" + "".join(lines) + "\r\nbody\r\n").encode()


def plan(
    client: Client = TRUSTED,
    raw: bytes | None = None,
    *,
    sender: str = "s@client.test",
    routing: dict[str, str] | None = None,
) -> Plan:
    raw = content() if raw is None else raw
    transaction = txn(sender, routing)
    return plan_message(transaction, raw, client, hostname="mx.test", pools=POOLS, now=NOW)


# --- queued -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Queued:
    name: str
    client: Client
    headers: dict[str, str]
    pool: str
    stream: str
    user: str


QUEUED = [
    Queued("trusted default", TRUSTED, {}, "default", "bulk", "trusted:127.0.0.0/8"),
    Queued("trusted names its pool", TRUSTED, {"X_Mailsluice_Pool": "default"}, "default", "bulk",
           "trusted:127.0.0.0/8"),
    Queued("user default pool", AUTHENTICATED, {}, "bulk", "bulk", "app1"),
    Queued("user picks a pool", AUTHENTICATED, {"X_Mailsluice_Pool": " VIP "}, "vip", "bulk",
           "app1"),
    Queued("transactional", TRUSTED, {"X_Mailsluice_Stream": "Transactional"}, "default",
           "transactional", "trusted:127.0.0.0/8"),
    Queued("explicit bulk", AUTHENTICATED, {"X_Mailsluice_Stream": "bulk"}, "bulk", "bulk",
           "app1"),
]  # fmt: skip


@pytest.mark.parametrize("case", QUEUED, ids=[c.name for c in QUEUED])
def test_a_queued_message_plan(case: Queued) -> None:
    got = plan(case.client, content(**case.headers))
    # one record per routing key, recipients in RCPT order, all with the same stamped message
    assert [(r.key, r.envelope.recipients) for r in got.records] == [
        (b"google", ("a@gmail.com", "c@googlemail.com")),
        (b"x.example", ("b@x.example",)),
    ]
    data = got.records[0].value
    assert {r.value for r in got.records} == {data}
    assert data.startswith(f"Received: from {case.client.helo} ([{case.client.peer_ip}])".encode())
    assert f"\r\nX-Mailsluice-Id: {QID}; pool={case.pool}\r\n".encode() in data
    assert b"X-Mailsluice-Pool" not in data and b"X-Mailsluice-Stream" not in data
    for record in got.records:
        assert record.topic == queue_topic(case.pool)
        env = record.envelope
        assert (env.queue_id, env.pool, env.stream, env.user) == (
            QID,
            case.pool,
            case.stream,
            case.user,
        )
        assert (env.sender, env.routing_key, env.received_at) == (
            "s@client.test",
            record.key.decode(),
            RECEIVED_AT,
        )
    # the outcome once every record is acknowledged
    outcome = got.outcome
    assert outcome.reply == f"250 2.0.0 Ok: queued as {QID}"
    assert outcome.counts == (
        Count("transactions", ("queued",)),
        Count("bytes", amount=len(data)),
    )
    (reception,) = outcome.events
    assert (reception.type, reception.ts, reception.queue_id, reception.pool) == (
        EventType.RECEPTION,
        NOW,
        QID,
        case.pool,
    )
    assert (reception.code, reception.enhanced, reception.size) == (250, "2.0.0", len(data))
    assert outcome.notes == (Note("queued 3 recipients in 2 records", QID, case.pool),)
    # and if any is not
    assert got.unwritten == UNWRITTEN
    assert got.unwritten.reply == "451 4.3.0 Queue temporarily unavailable, try again later"
    assert got.unwritten.counts == (Count("transactions", ("tempfail",)),)
    assert got.unwritten_note == Note("queueing failed", QID, case.pool)
    assert not got.events


def test_the_null_sender_and_a_lone_recipient() -> None:
    got = plan(sender="", routing={"x@y.example": "y.example"})
    (record,) = got.records
    assert record.envelope.sender == "" and record.envelope.recipients == ("x@y.example",)
    assert got.outcome.events[0].sender == ""
    assert b"\tfor <x@y.example>; " in record.value


def keys_of(got: Plan) -> set[str]:
    return {r.envelope.message_key for r in got.records}


def test_a_clients_second_copy_of_a_message_has_the_same_message_key() -> None:
    # After a 451 the client sends the same bytes again, in a new transaction (new queue id).
    raw = content(Message_ID="<m1@client.test>")
    first = plan(AUTHENTICATED, raw)
    again = plan_message(
        Transaction("01JDQ8Z5K3M4N5P6Q7R8S9T0WX", 9.0, RECEIVED_AT + 60, dict(ROUTING),
                    sender="s@client.test"),
        raw, AUTHENTICATED, hostname="mx.test", pools=POOLS, now=NOW + 60,
    )  # fmt: skip
    assert len(first.records) == 2 and len(keys_of(first)) == 1
    assert keys_of(again) == keys_of(first) and len(next(iter(keys_of(first)))) == 32
    assert again.records[0].envelope.queue_id != first.records[0].envelope.queue_id
    others = [
        plan(AUTHENTICATED, raw, sender="t@client.test"),  # another sender
        plan(TRUSTED, raw),  # another client
        plan(AUTHENTICATED, raw.replace(b"body", b"bodz")),  # another message
    ]
    assert all(keys_of(other).isdisjoint(keys_of(first)) for other in others)


def test_a_plan_depends_on_its_inputs_only() -> None:
    assert plan(AUTHENTICATED) == plan(AUTHENTICATED)
    assert plan(AUTHENTICATED) != plan(TRUSTED)


# --- refused ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("client", "headers", "reply", "reason"),
    [
        (TRUSTED, {"X_Mailsluice_Pool": "bulk"}, replies.S550_POOL_DENIED, "pool_denied"),
        (TRUSTED, {"X_Mailsluice_Pool": "../etc"}, replies.S550_POOL_DENIED, "pool_denied"),
        (AUTHENTICATED, {"X_Mailsluice_Pool": "default"}, replies.S550_POOL_DENIED, "pool_denied"),
        (AUTHENTICATED, {"X_Mailsluice_Pool": "nowhere"}, replies.S550_POOL_DENIED, "pool_denied"),
        (TRUSTED, {"X_Mailsluice_Stream": "urgent"}, replies.S550_BAD_STREAM, "bad_stream"),
    ],
    ids=["trusted-bulk", "bad-name", "user-default", "user-unknown", "bad-stream"],
)
def test_a_refused_message_plan(
    client: Client, headers: dict[str, str], reply: str, reason: str
) -> None:
    got = plan(client, content(**headers))
    assert not got.writes and got.records == () and got.events == ()
    assert got.outcome.reply == reply and reply.startswith("550 5.")
    assert got.outcome.counts == (
        Count("transactions", ("rejected",)),
        Count("recipients", ("rejected", reason), 3),
    )
    rejections = [
        (e.type, e.ts, e.queue_id, e.sender, e.recipient, e.reason, e.code, e.enhanced, e.text)
        for e in got.outcome.events
    ]
    code, enhanced, text = reply.split(" ", 2)
    assert rejections == [
        (EventType.REJECTION, NOW, QID, "s@client.test", r, reason, int(code), enhanced, text)
        for r in ROUTING
    ]


@pytest.mark.parametrize(
    ("header", "name"),
    [
        (b"From: a@x.test\r\nfrom: b@y.test\r\n", "From"),
        (b"Message-ID: <1@x>\r\nMESSAGE-id: <2@x>\r\n", "Message-Id"),
        (b"Date: Mon, 1 Dec 2026 10:00:00 +0000\r\nDate:\r\n Tue, 2 Dec 2026\r\n", "Date"),
        (b"Sender: a@x.test\r\nSender: b@y.test\r\n", "Sender"),
        (b"To: a@x.test\r\nReply-To: r@x.test\r\nTo:\r\n\tb@y.test\r\n", "To"),
        (b"Subject: a\r\n", "Subject"),  # content() gives one Subject already
    ],
)
def test_a_field_rfc5322_allows_once_given_twice_is_refused(header: bytes, name: str) -> None:
    raw = header + content()
    got = plan(TRUSTED, raw)
    reply = replies.S550_DUPLICATE_HEADER.format(name=name)
    assert reply.startswith("550 5.6.0 ") and not got.writes
    assert got.outcome.reply == reply
    assert got.outcome.counts[1] == Count("recipients", ("rejected", "duplicate_header"), 3)


@pytest.mark.parametrize(
    "header",
    [
        b"From: a@x.test\r\nResent-From: b@y.test\r\nResent-From: c@y.test\r\n",
        b"Received: from a\r\nReceived: from b\r\nComments: x\r\nComments: y\r\n",
        b"From: a@x.test\r\n Sender: folded into From, not a field\r\nSender: s@x.test\r\n",
    ],
)
def test_fields_that_may_repeat_pass(header: bytes) -> None:
    assert plan(TRUSTED, header + content()).writes


def test_which_fields_are_single_is_a_setting() -> None:
    raw = b"To: a@x.test\r\nTo: b@x.test\r\n" + content()
    lenient = plan_message(
        txn(), raw, TRUSTED, hostname="mx.test", pools=POOLS, now=NOW, single_fields=frozenset()
    )
    assert lenient.writes
    assert not plan(TRUSTED, raw).writes


def test_every_metric_a_plan_names_is_a_counter_of_the_handler() -> None:
    assert set(COUNTERS) == set(get_args(Metric))


# --- the publish step ---------------------------------------------------------------------------

ARF = (
    b"From: fbl@provider.test\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/report; report-type=feedback-report; boundary="B"\r\n\r\n'
    b"--B\r\nContent-Type: text/plain\r\n\r\nabuse report\r\n"
    b"--B\r\nContent-Type: message/feedback-report\r\n\r\n"
    b"Feedback-Type: abuse\r\nOriginal-Rcpt-To: <alice@yahoo.com>\r\n\r\n--B--\r\n"
)


def feedback_plan() -> Plan:
    transaction = Transaction(QID, 0.0, 0.0, feedback=["fbl@x.test"])
    return plan_feedback(
        transaction, ARF, rollup=load_rollup(), served_pools=POOLS.served_pools, now=NOW
    )


@pytest.fixture
async def silent_broker() -> AsyncIterator[str]:
    """A TCP listener that accepts and never answers: a Kafka that hangs."""
    writers: list[asyncio.StreamWriter] = []

    async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


def publisher_for(bootstrap: str, timeout_s: float = 5.0) -> Publisher:
    settings = KafkaSettings(bootstrap=bootstrap, request_timeout_ms=1000)
    return Publisher(settings, max_message_size=1 << 20, publish_timeout_s=timeout_s)


async def test_nothing_to_write_answers_at_once_without_kafka() -> None:
    publisher = publisher_for(f"127.0.0.1:{free_port()}")
    refused = plan(TRUSTED, content(X_Mailsluice_Stream="urgent"))
    try:
        assert await publish_plan(publisher, refused) is refused.outcome
    finally:
        await publisher.stop()


@pytest.mark.parametrize("kind", ["message", "feedback"])
async def test_unreachable_kafka_answers_451(kind: str) -> None:
    publisher = publisher_for(f"127.0.0.1:{free_port()}")
    planned = plan() if kind == "message" else feedback_plan()
    assert planned.writes
    try:
        outcome = await publish_plan(publisher, planned)
    finally:
        await publisher.stop()
    assert outcome is planned.unwritten and outcome.reply.startswith("451 4.3.0 ")


async def test_kafka_without_acks_in_time_answers_451(silent_broker: str) -> None:
    publisher = publisher_for(silent_broker, timeout_s=0.5)
    planned = plan()
    try:
        outcome = await publish_plan(publisher, planned)
    finally:
        await publisher.stop()
    assert outcome is planned.unwritten and outcome.reply.startswith("451 4.3.0 ")


async def test_every_record_acknowledged_answers_250(kafka: KafkaBroker) -> None:
    settings = kafka.settings()
    await ensure_topics(settings, standard_topics(settings, ["default"], 1 << 20))
    publisher = Publisher(settings, max_message_size=1 << 20, publish_timeout_s=10.0)
    await publisher.start()
    queue_id = f"PLAN{uid().upper()}"
    planned = plan_message(
        Transaction(queue_id, 0.0, RECEIVED_AT, dict(ROUTING), sender="s@client.test"),
        content(),
        TRUSTED,
        hostname="mx.test",
        pools=POOLS,
        now=NOW,
    )
    try:
        outcome = await publish_plan(publisher, planned)
    finally:
        await publisher.stop()
    assert outcome is planned.outcome
    assert outcome.reply == f"250 2.0.0 Ok: queued as {queue_id}"
    records = await queued(settings, queue_id, expect=2)
    assert sorted((r.topic, r.key, r.envelope, r.value) for r in records) == sorted(
        (r.topic, r.key.decode(), r.envelope, r.value) for r in planned.records
    )
    assert EVENTS_TOPIC not in {r.topic for r in records}
