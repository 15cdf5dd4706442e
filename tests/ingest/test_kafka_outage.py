"""Kafka stopped mid-run: clients get 451, never 250; once Kafka is back, mail flows again,
what was answered 451 is never queued afterwards (the client sends it again), and the events
decided during the outage are written once Kafka is back, none lost.

This module stops and restarts the session's broker; it restarts it in a finally."""

from __future__ import annotations

import asyncio
import time

from support.eventually import eventually
from support.ingest import (
    SendResult,
    events,
    queue_id_of,
    queued,
    running_ingest,
    smtp_send,
    uid,
)
from support.topic_reader import read_topic

from mailsluice.contracts.envelope import envelope_from_headers
from mailsluice.contracts.events import EventType
from mailsluice.contracts.topics import queue_topic


async def test_kafka_outage_gives_451_then_recovers(kafka, dns_server, dns_nameserver) -> None:
    settings = kafka.settings(request_timeout_ms=3000)
    domain = f"outage-{uid()}.test"
    dns_server.set_mx(domain, [(10, f"mx.{domain}")])
    body = b"Subject: outage\r\n\r\nbody\r\n"
    async with running_ingest(
        settings,
        dns_nameserver,
        is_suppressed=lambda a, _scopes: a.startswith("gone@"),
        publish_timeout_s=4.0,
        serve_http=True,
        http_port=0,
    ) as service:
        before = await asyncio.to_thread(smtp_send, service.port, "s@c.test", [f"a@{domain}"], body)
        queue_id_of(before.data_reply)
        assert service.ready() == (True, "ok")
        try:
            await asyncio.to_thread(kafka.stop)
            replies = []
            for _ in range(2):
                started = time.monotonic()
                result = await asyncio.to_thread(
                    smtp_send, service.port, "s@c.test", [f"b@{domain}"], body
                )
                replies.append(result.data_reply)
                assert time.monotonic() - started < 30
            assert all(r is not None and r[0] == 451 for r in replies), replies
            assert replies[0][1].startswith(b"4.3.0 ")
            assert service.ready()[0] is False
            # a recipient refused during the outage: its rejection event waits for Kafka
            refused = await asyncio.to_thread(
                smtp_send, service.port, "s@c.test", [f"gone@{domain}"], body
            )
            assert refused.refused[f"gone@{domain}"][0] == 550, refused
        finally:
            await asyncio.to_thread(kafka.start)
        # the producer recovers by itself: the next messages are queued again

        def queued_again() -> SendResult | None:
            result = smtp_send(service.port, "s@c.test", [f"c@{domain}"], body)
            if result.data_reply and result.data_reply[0] == 250:
                return result
            assert result.data_reply and result.data_reply[0] == 451, result
            return None

        result = await eventually(
            queued_again,
            within=60,
            interval=1,
            what="mail to flow again after Kafka returned",
            blocking=True,
        )
        queue_id = queue_id_of(result.data_reply)
        records = await queued(settings, queue_id, expect=1)
        assert [r.envelope.recipients for r in records] == [(f"c@{domain}",)]
        await eventually(lambda: service.ready()[0], within=10, what="ready again")
        assert service.ready() == (True, "ok")
    # Ingest has stopped, so every producer it had is closed: the records of the messages
    # answered 451 were dropped with the failed producer, not flushed once Kafka was back.
    answered_451 = await read_topic(
        settings,
        queue_topic("default"),
        lambda r: envelope_from_headers(r.headers).recipients == (f"b@{domain}",),
        expect=0,
    )
    assert answered_451 == []
    rejected = await events(
        settings,
        lambda e: e.type is EventType.REJECTION and e.recipient == f"gone@{domain}",
        expect=1,
    )
    assert [e.reason for e in rejected] == ["suppressed"]
