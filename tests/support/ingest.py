"""Helpers for the ingest tests: a running IngestService on loopback, SMTP clients (smtplib in a
thread, raw asyncio sockets, swaks) and a reader of queue records / events in Kafka."""

from __future__ import annotations

import asyncio
import contextlib
import smtplib
import ssl
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition

from mailsluice.contracts.envelope import Envelope, envelope_from_headers
from mailsluice.contracts.events import Event, decode_event
from mailsluice.contracts.topics import EVENTS_TOPIC, queue_topic
from mailsluice.ingest.message import Trace
from mailsluice.ingest.service import IngestService
from mailsluice.ingest.settings import IngestSettings
from mailsluice.kafka.clients import make_consumer
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.resolver import DnsSettings


def uid() -> str:
    return uuid.uuid4().hex[:10]


def ingest_settings(**overrides: Any) -> IngestSettings:
    values: dict[str, Any] = {
        "listen_host": "127.0.0.1",
        "listen_port": 0,
        "http_port": 0,
        "hostname": "ingest.test",
        "greet_pause_s": 0.0,
        "publish_timeout_s": 5.0,
        "shutdown_grace_s": 2.0,
    }
    values.update(overrides)
    return IngestSettings(**values)


@contextlib.asynccontextmanager
async def running_ingest(
    kafka_settings: KafkaSettings,
    nameserver: str,
    *,
    is_suppressed: Callable[[str], bool] | None = None,
    serve_http: bool = False,
    **overrides: Any,
) -> AsyncIterator[IngestService]:
    service = IngestService(
        ingest_settings(**overrides),
        kafka_settings,
        DnsSettings(nameservers=nameserver, timeout_s=1.0),
        is_suppressed=is_suppressed,
        serve_http=serve_http,
    )
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


# --- clients ------------------------------------------------------------------------------------


@dataclass
class SendResult:
    refused: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    data_reply: tuple[int, bytes] | None = None
    error: Exception | None = None


def smtp_send(
    port: int,
    sender: str,
    recipients: list[str],
    message: bytes,
    *,
    login: tuple[str, str] | None = None,
    starttls: bool = False,
) -> SendResult:
    """One transaction with smtplib (blocking: call through asyncio.to_thread)."""
    result = SendResult()
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.test")
        if starttls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            client.starttls(context=context)
            client.ehlo("client.test")
        if login:
            client.login(*login)
        code, reply = client.mail(sender)
        if code != 250:
            result.data_reply = (code, reply)
            return result
        accepted = 0
        for rcpt in recipients:
            code, reply = client.rcpt(rcpt)
            if code == 250:
                accepted += 1
            else:
                result.refused[rcpt] = (code, reply)
        if not accepted:
            client.rset()
            return result
        result.data_reply = client.data(message)
    return result


class RawClient:
    """A raw SMTP conversation over asyncio streams (smuggling, pipelining, limits)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int, *, greeting: bool = True) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        client = cls(reader, writer)
        if greeting:
            line = await client.reply()
            assert line.startswith("220 "), line
        return client

    async def reply(self, wait_s: float = 15.0) -> str:
        """The next complete reply (multi-line replies joined with newlines)."""
        lines = []
        while True:
            raw = await asyncio.wait_for(self.reader.readline(), wait_s)
            if not raw:
                lines.append("<EOF>")
                break
            line = raw.decode().rstrip("\r\n")
            lines.append(line)
            if line[3:4] != "-":
                break
        return "\n".join(lines)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def cmd(self, line: str) -> str:
        await self.send(line.encode() + b"\r\n")
        return await self.reply()

    async def closed(self, wait_s: float = 10.0) -> bool:
        """True if the server closes the connection (after any pending replies)."""
        try:
            while await asyncio.wait_for(self.reader.read(65536), wait_s):
                pass
        except (ConnectionResetError, TimeoutError):
            return False
        return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


async def swaks(*args: str) -> subprocess.CompletedProcess[str]:
    proc = await asyncio.create_subprocess_exec(
        "/usr/bin/swaks",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return subprocess.CompletedProcess(["swaks", *args], proc.returncode, out.decode(), "")


async def eventually(condition: Callable[[], bool], within_s: float = 10.0) -> None:
    """Return once condition() holds (checked on every event-loop turn), or fail after
    `within_s`: for state the server changes after the client has seen the reply."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not condition():
        assert loop.time() < deadline, "condition never held"
        await asyncio.sleep(0.01)


# --- Kafka --------------------------------------------------------------------------------------


@dataclass
class QueuedRecord:
    key: str
    value: bytes
    envelope: Envelope
    topic: str
    partition: int


async def read_topic(
    settings: KafkaSettings,
    topic: str,
    match: Callable[[Any], bool],
    *,
    expect: int,
    wait_s: float = 20.0,
    settle: float = 0.0,
) -> list[Any]:
    """Every record of `topic` (from the beginning) for which match(record) holds; returns once
    `expect` are found (then waits `settle` seconds more for any extra) or at the timeout."""
    consumer = make_consumer(settings, group_id=None, client_id=f"test-reader-{uid()}")
    await consumer.start()
    found: list[Any] = []
    try:
        partitions = consumer.partitions_for_topic(topic)
        while not partitions:
            await asyncio.sleep(0.2)
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        settle_until: float | None = None
        while loop.time() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                found.extend(r for r in records if match(r))
            if len(found) >= expect:
                if settle_until is None:
                    settle_until = loop.time() + settle
                if loop.time() >= settle_until:
                    break
    finally:
        await consumer.stop()
    return found


async def queued(
    settings: KafkaSettings,
    queue_id: str,
    *,
    pool: str = "default",
    expect: int,
    settle: float = 1.0,
) -> list[QueuedRecord]:
    def match(record: Any) -> bool:
        return envelope_from_headers(record.headers).queue_id == queue_id

    records = await read_topic(settings, queue_topic(pool), match, expect=expect, settle=settle)
    return [
        QueuedRecord(
            r.key.decode(),
            r.value,
            envelope_from_headers(r.headers),
            r.topic,
            r.partition,
        )
        for r in records
    ]


async def events(
    settings: KafkaSettings, match: Callable[[Event], bool], *, expect: int
) -> list[Event]:
    records = await read_topic(
        settings,
        EVENTS_TOPIC,
        lambda r: match(decode_event(r.value)),
        expect=expect,
        settle=0.5,
    )
    return [decode_event(r.value) for r in records]


def queue_id_of(reply: tuple[int, bytes] | None) -> str:
    assert reply is not None and reply[0] == 250, reply
    text = reply[1].decode()
    assert text.startswith("2.0.0 Ok: queued as "), text
    return text.rsplit(" ", 1)[1]


def make_cert(directory: Path) -> tuple[str, str]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=ingest.test",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return str(cert), str(key)


# A trace with an injection attempt in HELO, shared by the message tests.
TRACE = Trace(
    helo="client.example\r\nX-Injected: yes",
    peer_ip="127.0.0.1",
    hostname="mx.test",
    protocol="ESMTP",
    queue_id="01ABC",
    recipients=("a@x.example",),
    now=0.0,
)
