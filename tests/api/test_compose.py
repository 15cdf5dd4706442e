"""One recipient's message and queue record: the fields the API writes, MIME structure, CRLF,
the envelope (tenant, campaign, tags, list, stream, user) and the message key."""

from __future__ import annotations

import email
from dataclasses import replace
from email import policy

from mailsluice.api.compose import Letter, Part, compose, envelope, message_key, queue_record
from mailsluice.api.models import Mailbox
from mailsluice.api.render import Rendered
from mailsluice.contracts.envelope import ENVELOPE_HEADER, decode_envelope

NOW = 1_790_000_000.0
LETTER = Letter(
    tenant="acme",
    sender=Mailbox(email="news@acme.test", name="Acme News"),
    pool="bulk",
    stream="bulk",
    campaign="spring-sale",
    tags=("promo", "eu"),
    list_id="weekly",
    headers=(("Reply-To", "help@acme.test"), ("X-Campaign-Ref", "42")),
    attachments=(),
    request_key="key-1",
)
TO = Mailbox(email="ann@example.com", name="Ann Émile")


def parse(data: bytes) -> email.message.EmailMessage:
    msg = email.message_from_bytes(data, policy=policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    return msg


def test_a_text_and_html_message_with_the_api_fields() -> None:
    data = compose(LETTER, TO, Rendered("Hi Ann", "plain", "<p>html</p>"), queue_id="Q1", now=NOW)
    assert b"\r\n" in data and b"\n" not in data.replace(b"\r\n", b"")
    msg = parse(data)
    assert msg["From"] == "Acme News <news@acme.test>"
    assert msg["To"].addresses[0].addr_spec == "ann@example.com"
    assert msg["To"].addresses[0].display_name == "Ann Émile"
    assert msg["Subject"] == "Hi Ann"
    assert msg["Message-ID"] == "<Q1@acme.test>"
    # a feedback-loop report quotes it: the complaint finds pool, tenant and campaign
    assert msg["X-Mailsluice-Id"] == "Q1; pool=bulk; tenant=acme; campaign=spring-sale"
    assert msg["List-Id"] == "<weekly>"
    assert msg["Reply-To"] == "help@acme.test"
    assert msg["X-Campaign-Ref"] == "42"
    assert msg["MIME-Version"] == "1.0"
    assert msg["Date"].datetime.timestamp() == NOW
    assert msg.get_content_type() == "multipart/alternative"
    parts = [(p.get_content_type(), p.get_content().strip()) for p in msg.iter_parts()]
    assert parts == [("text/plain", "plain"), ("text/html", "<p>html</p>")]


def test_attachments_make_a_mixed_message() -> None:
    pdf = Part("a.pdf", "application/pdf", b"%PDF-1\x00\xff")
    letter = replace(LETTER, attachments=(pdf, Part("n.txt", "text/plain", b"note")), list_id="")
    data = compose(letter, TO, Rendered("s", None, "<p>only html</p>"), queue_id="Q2", now=NOW)
    msg = parse(data)
    assert msg.get_content_type() == "multipart/mixed"
    assert "List-Id" not in msg
    body, attached, note = list(msg.iter_parts())
    assert body.get_content_type() == "text/html"
    assert attached.get_filename() == "a.pdf"
    assert attached.get_content() == b"%PDF-1\x00\xff"
    assert (note.get_filename(), note.get_content_type()) == ("n.txt", "text/plain")
    assert data.count(b"MIME-Version") == 1
    # the same attachments in the next recipient's message
    again = parse(compose(letter, TO, Rendered("s", "t", None), queue_id="Q3", now=NOW))
    assert [p.get_filename() for p in again.iter_parts()] == [None, "a.pdf", "n.txt"]


def test_the_record_carries_tenant_campaign_tags_and_a_message_key() -> None:
    env = envelope(LETTER, TO, index=3, queue_id="Q3", routing_key="example.com", now=NOW)
    topic, value, key, headers = queue_record(env, b"data")
    assert (topic, value, key) == ("mailsluice.queue.bulk", b"data", b"example.com")
    (name, raw), *_ = headers
    assert name == ENVELOPE_HEADER
    got = decode_envelope(raw)
    assert got.recipients == ("ann@example.com",)
    assert (got.tenant, got.campaign, got.tags, got.list_id) == (
        "acme",
        "spring-sale",
        ("promo", "eu"),
        "weekly",
    )
    assert (got.user, got.stream, got.sender, got.pool) == (
        "api:acme",
        "bulk",
        "news@acme.test",
        "bulk",
    )
    # the same request again makes the same key (delivery's dedup), another recipient another
    assert got.message_key == message_key("acme", "key-1", 3)
    assert message_key("acme", "key-1", 3) != message_key("acme", "key-1", 4)
    assert message_key("acme", "key-1", 3) != message_key("beta", "key-1", 3)
