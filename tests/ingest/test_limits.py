"""Ingest limits and protocol policing: recipients, size, messages and errors per connection,
timeouts, SMTP smuggling, pipelining and early talkers, graceful shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from support.eventually import eventually
from support.ingest import RawClient, accepts, queued, running_ingest, uid
from support.topic_reader import read_topic

from mailsluice.contracts.envelope import envelope_from_headers
from mailsluice.contracts.topics import queue_topic
from mailsluice.ingest.service import IngestService
from mailsluice.kafka.settings import KafkaSettings


@pytest.fixture(scope="module")
async def ingest(kafka_settings, dns_nameserver) -> AsyncIterator[IngestService]:
    """This module's ingest, with the settings its tests are about."""
    async with running_ingest(
        kafka_settings,
        dns_nameserver,
        is_suppressed=lambda address, _scopes: False,
        max_recipients=3,
        max_message_size=4096,
        max_messages_per_connection=2,
        max_errors_per_connection=4,
    ) as service:
        yield service


async def start_data(client: RawClient, domain: str, rcpts: int = 1) -> None:
    assert (await client.cmd("EHLO client.test")).startswith("250-")
    assert (await client.cmd("MAIL FROM:<s@client.test>")).startswith("250 ")
    for i in range(rcpts):
        assert (await client.cmd(f"RCPT TO:<r{i}@{domain}>")).startswith("250 ")
    assert (await client.cmd("DATA")).startswith("354 ")


async def test_too_many_recipients(ingest: IngestService, domain: str) -> None:
    client = await RawClient.connect(ingest.port)
    try:
        await client.cmd("EHLO client.test")
        await client.cmd("MAIL FROM:<s@client.test>")
        for i in range(3):
            assert (await client.cmd(f"RCPT TO:<r{i}@{domain}>")).startswith("250 ")
        assert await client.cmd(f"RCPT TO:<r9@{domain}>") == "452 4.5.3 Too many recipients"
        assert (await client.cmd("DATA")).startswith("354 ")
        await client.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")
        assert (await client.reply()).startswith("250 2.0.0 Ok: queued as ")
    finally:
        await client.close()


async def test_actual_size_too_big(ingest: IngestService, domain: str) -> None:
    client = await RawClient.connect(ingest.port)
    try:
        await start_data(client, domain)
        await client.send(b"Subject: big\r\n\r\n" + (b"z" * 70 + b"\r\n") * 100 + b".\r\n")
        assert await client.reply() == "552 5.3.4 Message too big"
    finally:
        await client.close()


async def test_max_messages_per_connection(ingest: IngestService, domain: str) -> None:
    client = await RawClient.connect(ingest.port)
    try:
        for _ in range(2):
            await start_data(client, domain)
            await client.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")
            assert (await client.reply()).startswith("250 2.0.0 Ok: queued as ")
        reply = await client.cmd("MAIL FROM:<s@client.test>")
        assert reply == "421 4.7.0 Too many messages on this connection, closing"
        assert await client.closed()
    finally:
        await client.close()


async def test_max_errors_per_connection(ingest: IngestService) -> None:
    client = await RawClient.connect(ingest.port)
    try:
        await client.cmd("EHLO client.test")
        for _ in range(3):
            assert await client.cmd("BOGUS") == "500 5.5.2 Error: command not recognized"
        assert await client.cmd("RCPT TO:<a@b.test>") == (
            "503 5.5.1 Error: need MAIL command\n"
            "421 4.7.0 Too many errors on this connection, closing"
        ) or (await client.reply()).startswith("421 4.7.0")
        assert await client.closed()
    finally:
        await client.close()


async def test_idle_and_session_timeouts(kafka_settings, dns_nameserver) -> None:
    async with running_ingest(
        kafka_settings,
        dns_nameserver,
        is_suppressed=lambda a, _scopes: False,
        idle_timeout_s=0.5,
        session_timeout_s=1.5,
    ) as service:
        idle = await RawClient.connect(service.port)
        busy = await RawClient.connect(service.port)

        async def stay_idle() -> str:
            return await idle.reply(wait_s=5)

        async def keep_busy() -> str:
            for _ in range(20):  # keeps resetting the idle timer, but the session ends
                reply = await busy.cmd("NOOP")
                if reply != "250 2.0.0 Ok":
                    return reply
                await asyncio.sleep(0.2)  # a client that talks slowly but never idles 0.5 s
            return "never closed"

        try:
            idle_reply, busy_reply = await asyncio.gather(stay_idle(), keep_busy())
            assert idle_reply == "421 4.4.2 Idle timeout exceeded, closing"
            assert busy_reply == "421 4.4.2 Session time limit exceeded, closing"
            assert await idle.closed()
            assert await busy.closed()
        finally:
            await idle.close()
            await busy.close()


# --- SMTP smuggling -----------------------------------------------------------------------------

SMUGGLE_ENDS = [b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\r\n.\r", b"\n.\r"]


@pytest.mark.parametrize("fake_end", SMUGGLE_ENDS, ids=repr)
async def test_smuggled_end_of_data_never_splits_a_message(
    ingest: IngestService, kafka_settings: KafkaSettings, domain: str, fake_end: bytes
) -> None:
    marker = f"smuggled-{uid()}"
    smuggled = (
        b"MAIL FROM:<admin@victim.test>\r\nRCPT TO:<"
        + marker.encode()
        + b"@"
        + domain.encode()
        + b">\r\nDATA\r\nSubject: "
        + marker.encode()
        + b"\r\n\r\nspoofed\r\n"
    )
    client = await RawClient.connect(ingest.port)
    try:
        await start_data(client, domain)
        await client.send(b"Subject: outer\r\n\r\nfirst part" + fake_end + smuggled + b".\r\n")
        reply = await client.reply()
        assert reply.startswith("250 2.0.0 Ok: queued as "), reply
        queue_id = reply.rsplit(" ", 1)[1]
        # nothing more: the smuggled commands were message text, not commands
        assert await client.cmd("NOOP") == "250 2.0.0 Ok"
    finally:
        await client.close()
    records = await queued(kafka_settings, queue_id, expect=1)
    assert len(records) == 1
    value = records[0].value
    assert marker.encode() in value  # the smuggled text is part of the one message ...
    assert b"\n" not in value.replace(b"\r\n", b"") and b"\r" not in value.replace(b"\r\n", b"")
    # ... and no record anywhere carries the smuggled recipient
    stray = await read_topic(
        kafka_settings,
        queue_topic("default"),
        lambda r: marker in " ".join(envelope_from_headers(r.headers).recipients),
        expect=0,
    )
    assert stray == []


# --- pipelining -----------------------------------------------------------------------------


async def test_rfc2920_pipelining_is_accepted(ingest: IngestService, domain: str) -> None:
    client = await RawClient.connect(ingest.port)
    try:
        await client.cmd("EHLO client.test")
        await client.send(
            f"MAIL FROM:<s@client.test>\r\nRCPT TO:<a@{domain}>\r\nRCPT TO:<b@{domain}>\r\n"
            "DATA\r\n".encode()
        )
        replies = [await client.reply() for _ in range(4)]
        assert [r[:3] for r in replies] == ["250", "250", "250", "354"]
        await client.send(b"Subject: p\r\n\r\nbody\r\n.\r\nQUIT\r\n")
        assert (await client.reply()).startswith("250 2.0.0 Ok: queued as ")
        assert await client.reply() == "221 2.0.0 Bye"
    finally:
        await client.close()


async def test_message_sent_with_data_before_354_is_refused(
    ingest: IngestService, domain: str
) -> None:
    client = await RawClient.connect(ingest.port)
    try:
        await client.cmd("EHLO client.test")
        await client.send(
            f"MAIL FROM:<s@client.test>\r\nRCPT TO:<a@{domain}>\r\nDATA\r\n"
            "Subject: eager\r\n\r\nbody\r\n.\r\n".encode()
        )
        assert (await client.reply())[:3] == "250"
        assert (await client.reply())[:3] == "250"
        assert await client.reply() == "554 5.5.0 SMTP protocol synchronization error, closing"
        assert await client.closed()
    finally:
        await client.close()


async def test_commands_pipelined_after_ehlo_are_refused(ingest: IngestService) -> None:
    client = await RawClient.connect(ingest.port)
    try:
        await client.send(b"EHLO client.test\r\nMAIL FROM:<s@client.test>\r\n")
        assert await client.reply() == "554 5.5.0 SMTP protocol synchronization error, closing"
        assert await client.closed()
    finally:
        await client.close()


async def test_early_talker_is_refused(kafka_settings, dns_nameserver) -> None:
    async with running_ingest(
        kafka_settings, dns_nameserver, is_suppressed=lambda a, _scopes: False, greet_pause_s=0.3
    ) as service:
        early = await RawClient.connect(service.port, greeting=False)
        await early.send(b"EHLO client.test\r\n")
        polite = await RawClient.connect(service.port)
        try:
            assert await early.reply() == ("554 5.5.0 SMTP protocol synchronization error, closing")
            assert await early.closed()
            assert (await polite.cmd("EHLO client.test")).startswith("250-")
        finally:
            await early.close()
            await polite.close()


# --- shutdown -----------------------------------------------------------------------------------


async def test_shutdown_finishes_open_transaction_then_closes(
    kafka_settings: KafkaSettings, dns_nameserver, domain: str
) -> None:
    async with running_ingest(
        kafka_settings, dns_nameserver, is_suppressed=lambda a, _scopes: False, shutdown_grace_s=10
    ) as service:
        port = service.port
        client = await RawClient.connect(port)
        idle = await RawClient.connect(port)
        try:
            await start_data(client, domain)
            stopping = asyncio.create_task(service.stop())

            async def refused() -> bool:
                return not await accepts(port, greeting=False)

            await eventually(refused, within=10, what="no longer accepting")
            assert not stopping.done()  # waiting for the open transaction
            await client.send(b"Subject: last\r\n\r\nbody\r\n.\r\n")
            reply = await client.reply()
            assert reply.startswith("250 2.0.0 Ok: queued as ")
            await stopping
            assert await client.reply() == "421 4.3.2 Service shutting down, closing"
            assert await idle.reply() == "421 4.3.2 Service shutting down, closing"
        finally:
            await client.close()
            await idle.close()
    records = await queued(kafka_settings, reply.rsplit(" ", 1)[1], expect=1)
    assert len(records) == 1
