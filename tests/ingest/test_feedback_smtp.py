"""Feedback-loop intake end to end: real SMTP on loopback, the real broker. A message queued
through ingest, then an ARF report about it sent by a stranger to the feedback address: 250, a
complaint event naming the recipient, queue id and pool, and nothing queued for delivery."""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import AsyncIterator
from email.message import EmailMessage

import pytest
from prometheus_client import REGISTRY
from support.ingest import events, queue_id_of, queued, running_ingest, uid
from support.topic_reader import read_topic

from mailsluice.contracts.events import EventType
from mailsluice.contracts.topics import queue_topic
from mailsluice.ingest.service import IngestService
from mailsluice.kafka.settings import KafkaSettings

FBL = "fbl@mail.sender.test"
TRUSTED_IP = "127.0.0.2"  # the sending application; 127.0.0.1 is a stranger here


@pytest.fixture(scope="module")
async def ingest(kafka_settings, dns_nameserver) -> AsyncIterator[IngestService]:
    """This module's ingest, with the settings its tests are about."""
    async with running_ingest(
        kafka_settings,
        dns_nameserver,
        is_suppressed=lambda _address, _scopes: False,
        trusted_networks=f"{TRUSTED_IP}/32",
        feedback_addresses=f"Other@fbl.test, {FBL.upper()}",
        verify_domains=False,
    ) as service:
        yield service


def transaction(
    port: int, recipients: list[str], message: bytes, *, source: str = "127.0.0.1"
) -> tuple[list[tuple[int, str]], tuple[int, str] | None]:
    """RCPT replies and the DATA reply (None when no recipient was accepted)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=(source, 0)) as client:
        client.ehlo("provider.test")
        code, text = client.mail("")
        assert code == 250, (code, text)
        rcpts = [client.rcpt(r) for r in recipients]
        answers = [(code, text.decode()) for code, text in rcpts]
        if not any(code == 250 for code, _ in answers):
            client.rset()
            return answers, None
        code, text = client.data(message)
        return answers, (code, text.decode())


def arf_report(original_header: bytes, marker: str) -> bytes:
    header = original_header.decode().split("\r\n\r\n", 1)[0] + "\r\n"
    return (
        "From: Yahoo! Mail AntiSpam Feedback <feedback@arf.mail.yahoo.com>\r\n"
        f"To: {FBL}\r\n"
        f"Subject: FW: {marker}\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=feedback-report; boundary="B"\r\n'
        "\r\n"
        "--B\r\nContent-Type: text/plain\r\n\r\nThis is an email abuse report.\r\n"
        "--B\r\nContent-Type: message/feedback-report\r\n\r\n"
        "Feedback-Type: abuse\r\n"
        "User-Agent: Yahoo!-Mail-Feedback/2.0\r\n"
        "Version: 0.1\r\n"
        "Original-Mail-From: <news@sender.test>\r\n\r\n"
        "--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"{header}"
        "--B--\r\n"
    ).encode()


def plain(subject: str, to: str = FBL) -> bytes:
    msg = EmailMessage()
    msg["From"] = "someone@provider.test"
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content("Not a report.\n")
    return msg.as_bytes()


def complaints_counted(provider: str) -> float:
    labels = {"pool": "default", "provider": provider}
    return REGISTRY.get_sample_value("mailsluice_ingest_complaints_total", labels) or 0.0


def rejected_counted(reason: str) -> float:
    name = "mailsluice_ingest_feedback_rejected_total"
    return REGISTRY.get_sample_value(name, {"reason": reason}) or 0.0


async def test_report_about_our_message_becomes_a_complaint_event(
    ingest: IngestService, kafka_settings: KafkaSettings
) -> None:
    victim = f"reader-{uid()}@yahoo.com"
    answers, data = await asyncio.to_thread(
        transaction, ingest.port, [victim], plain("offers", to=victim), source=TRUSTED_IP
    )
    queue_id = queue_id_of((data[0], data[1].encode()) if data else None)
    [record] = await queued(kafka_settings, queue_id, expect=1)
    assert f"\r\nX-Mailsluice-Id: {queue_id}; pool=default\r\n".encode() in record.value

    before = complaints_counted("yahoo")
    marker = f"report-{uid()}"
    answers, data = await asyncio.to_thread(
        transaction, ingest.port, [FBL], arf_report(record.value, marker)
    )
    assert answers == [(250, "2.1.5 Recipient ok")]
    assert data == (250, "2.0.0 Ok: 1 complaint(s) recorded")
    assert complaints_counted("yahoo") == before + 1

    found = await events(
        kafka_settings,
        lambda e: e.type == EventType.COMPLAINT and e.recipient == victim,
        expect=1,
    )
    assert [(e.queue_id, e.pool, e.routing_key, e.reason, e.sender) for e in found] == [
        (queue_id, "default", "yahoo", "abuse", "news@sender.test")
    ]
    # Published with acks before the 250, and nothing went to the delivery queue.
    leaked = await read_topic(
        kafka_settings,
        queue_topic("default"),
        lambda r: marker.encode() in r.value,
        expect=0,
    )
    assert leaked == []


async def test_non_report_to_the_feedback_address_gets_550(ingest: IngestService) -> None:
    before = rejected_counted("not_report")
    answers, data = await asyncio.to_thread(
        transaction, ingest.port, ["other@FBL.test"], plain("just mail")
    )
    assert answers == [(250, "2.1.5 Recipient ok")]
    assert data == (550, "5.6.0 Not a feedback report (RFC 5965 multipart/report expected)")
    assert rejected_counted("not_report") == before + 1


async def test_strangers_still_cannot_relay(ingest: IngestService) -> None:
    answers, data = await asyncio.to_thread(
        transaction,
        ingest.port,
        [f"x-{uid()}@yahoo.com", "fbl%mail.sender.test@relay.test", FBL],
        plain("relay?"),
    )
    assert answers[:2] == [
        (530, "5.7.0 Authentication required"),
        (530, "5.7.0 Authentication required"),
    ]
    assert answers[2] == (250, "2.1.5 Recipient ok")
    assert data is not None and data[0] == 550  # the rest is a plain message: refused


async def test_reports_and_mail_never_share_a_transaction(ingest: IngestService) -> None:
    answers, data = await asyncio.to_thread(
        transaction,
        ingest.port,
        [f"y-{uid()}@yahoo.com", FBL],
        plain("mixed"),
        source=TRUSTED_IP,
    )
    assert answers == [
        (250, "2.1.5 Recipient ok"),
        (452, "4.5.3 Feedback reports go in a transaction of their own"),
    ]
    assert data is not None and data[0] == 250
