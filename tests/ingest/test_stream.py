"""Choosing the stream (transactional or bulk) at ingest with the X-Mailsluice-Stream header."""

from __future__ import annotations

import asyncio

import pytest
from support.ingest import TRACE, queue_id_of, queued, smtp_send, uid

from mailsluice.ingest.message import prepare_message
from mailsluice.ingest.plan import choose_stream
from mailsluice.ingest.service import IngestService
from mailsluice.kafka.settings import KafkaSettings


@pytest.mark.parametrize(
    ("header", "stream"),
    [
        (None, "bulk"),
        ("bulk", "bulk"),
        ("transactional", "transactional"),
        (" Transactional ", "transactional"),
        ("urgent", None),
        ("", "bulk"),
        ("  ", "bulk"),
    ],
)
def test_choose_stream(header: str | None, stream: str | None) -> None:
    assert choose_stream(header) == stream


def test_prepare_takes_out_the_stream_and_pool_headers() -> None:
    raw = (
        b"Subject: receipt\r\nX-Mailsluice-Stream: transactional\r\n"
        b"x-mailsluice-stream: bulk\r\nX-Mailsluice-Pool: p\r\n\r\nbody\r\n"
    )
    out = prepare_message(raw, TRACE, pool_header="X-Mailsluice-Pool")
    assert (out.stream, out.pool) == ("transactional", "p")  # the first occurrence counts
    assert b"mailsluice-stream" not in out.data.lower()
    assert b"\r\nSubject: receipt\r\n" in out.data


async def test_the_stream_header_reaches_the_envelope(
    ingest: IngestService, kafka_settings: KafkaSettings, dns_server
) -> None:
    domain = f"s-{uid()}.test"
    dns_server.set_mx(domain, [(10, f"mx.{domain}")])
    ids = {}
    for stream in ("transactional", None):
        header = f"X-Mailsluice-Stream: {stream}\r\n" if stream else ""
        data = f"Subject: s\r\n{header}\r\nbody\r\n".encode()
        result = await asyncio.to_thread(smtp_send, ingest.port, "s@c.test", [f"r@{domain}"], data)
        ids[stream or "bulk"] = queue_id_of(result.data_reply)
    for stream, queue_id in ids.items():
        (record,) = await queued(kafka_settings, queue_id, expect=1)
        assert record.envelope.stream == stream
        assert b"mailsluice-stream" not in record.value.lower()


async def test_an_unknown_stream_is_refused_with_550(ingest: IngestService, dns_server) -> None:
    domain = f"s-{uid()}.test"
    dns_server.set_mx(domain, [(10, f"mx.{domain}")])
    data = b"Subject: s\r\nX-Mailsluice-Stream: urgent\r\n\r\nbody\r\n"
    result = await asyncio.to_thread(smtp_send, ingest.port, "s@c.test", [f"r@{domain}"], data)
    assert result.data_reply == (550, b"5.6.0 X-Mailsluice-Stream must be transactional or bulk")
