"""RFC 3464 bounces: build one, parse it back with the stdlib email package."""

from __future__ import annotations

import email
import re
from email import policy
from email.message import EmailMessage, Message

import pytest

from mailsluice.contracts.envelope import Envelope
from mailsluice.delivery.transport.client import RecipientResult
from mailsluice.delivery.worker.dsn import build_dsn, original_headers, remote_mta

ORIGINAL = (
    b"From: Alice <alice@sender.test>\r\n"
    b"To: bob@example.test\r\n"
    b"Subject: Quarterly report\r\n"
    b"Message-ID: <orig-1@sender.test>\r\n"
    b"\r\n"
    b"Secret body text.\r\n"
)
NOW = 1_764_000_000.0


def env(sender: str = "alice@sender.test") -> Envelope:
    return Envelope(
        queue_id="01JQUEUEID",
        pool="default",
        sender=sender,
        recipients=("bob@example.test", "carol@example.test"),
        routing_key="example.test",
        received_at=NOW - 3600,
    )


FAILURES = [
    RecipientResult(
        "bob@example.test", 550, "5.1.1", "No such user here", "mx1.example.test[192.0.2.1]:25"
    ),
    RecipientResult("carol@example.test", 556, "5.1.10", "Recipient domain accepts no mail", ""),
]


def parse(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def test_dsn_structure_round_trips() -> None:
    raw = build_dsn(env(), ORIGINAL, FAILURES, reporting_mta="out.mailsluice.test", now=NOW)
    assert re.search(rb"\r(?!\n)|(?<!\r)\n", raw) is None  # CRLF throughout
    msg = parse(raw)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["From"].addresses[0].addr_spec == "MAILER-DAEMON@out.mailsluice.test"
    assert msg["To"].addresses[0].addr_spec == "alice@sender.test"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["Message-ID"].endswith("@out.mailsluice.test>")
    human, status, headers = msg.get_payload()
    assert human.get_content_type() == "text/plain"
    text = human.get_content()
    assert "bob@example.test" in text and "550 5.1.1 No such user here" in text
    assert status.get_content_type() == "message/delivery-status"
    blocks: list[Message] = status.get_payload()
    per_message, bob, carol = blocks
    assert per_message["Reporting-MTA"] == "dns; out.mailsluice.test"
    assert per_message["X-Mailsluice-Queue-ID"] == "01JQUEUEID"
    assert email.utils.parsedate_to_datetime(per_message["Arrival-Date"]).timestamp() == NOW - 3600
    assert bob["Final-Recipient"] == "rfc822; bob@example.test"
    assert bob["Action"] == "failed"
    assert bob["Status"] == "5.1.1"
    assert bob["Remote-MTA"] == "dns; mx1.example.test"
    assert bob["Diagnostic-Code"] == "smtp; 550 5.1.1 No such user here"
    assert carol["Status"] == "5.1.10"
    assert carol["Remote-MTA"] is None
    assert carol["Diagnostic-Code"].startswith("X-Mailsluice; 556 5.1.10")
    assert headers.get_content_type() == "text/rfc822-headers"
    returned = headers.get_payload(decode=True)
    assert b"Subject: Quarterly report" in returned
    assert b"Secret body text" not in returned


def test_transient_expiry_keeps_its_status() -> None:
    expired = [RecipientResult("bob@example.test", 451, "4.4.1", "connection refused", "")]
    msg = parse(build_dsn(env(), ORIGINAL, expired, reporting_mta="mta.test", now=NOW))
    (_, bob) = msg.get_payload()[1].get_payload()
    assert (bob["Action"], bob["Status"]) == ("failed", "4.4.1")


def test_hostile_text_cannot_inject_fields() -> None:
    evil = [
        RecipientResult(
            "bob@example.test",
            550,
            "5.7.1",
            "bad\r\nStatus: 2.0.0\r\n\r\nX: y\u00e9",
            "mx[1.2.3.4]:25",
        )
    ]
    msg = parse(build_dsn(env(), ORIGINAL, evil, reporting_mta="mta.test", now=NOW))
    (_, bob) = msg.get_payload()[1].get_payload()
    assert bob.get_all("Status") == ["5.7.1"]
    assert bob["Diagnostic-Code"] == "smtp; 550 5.7.1 bad Status: 2.0.0 X: y"


def test_8bit_and_bare_lf_original_headers() -> None:
    original = "Subject: Grüße\nFrom: a@b.test\n\nbody\n".encode()
    raw = build_dsn(env(), original, FAILURES[:1], reporting_mta="mta.test", now=NOW)
    msg = parse(raw)
    returned = msg.get_payload()[2].get_payload(decode=True)
    assert "Grüße".encode() in returned
    assert original_headers(original) == "Subject: Grüße\r\nFrom: a@b.test\r\n".encode()


def test_no_dsn_for_null_sender_or_nothing_failed() -> None:
    with pytest.raises(ValueError):
        build_dsn(env(sender=""), ORIGINAL, FAILURES, reporting_mta="m.test", now=NOW)
    with pytest.raises(ValueError):
        build_dsn(env(), ORIGINAL, [], reporting_mta="m.test", now=NOW)


def test_remote_mta() -> None:
    assert remote_mta("mx.example.net[127.0.0.5]:25") == "mx.example.net"
    assert remote_mta("127.0.0.5:25") == "[127.0.0.5]"
    assert remote_mta("") == ""
