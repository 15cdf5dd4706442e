"""Helpers for the ingest tests: a running IngestService on loopback, SMTP clients (smtplib in a
thread, raw asyncio sockets, swaks) and a reader of queue records / events in Kafka."""

from __future__ import annotations

import asyncio
import contextlib
import smtplib
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailsluice.contracts.envelope import Envelope, envelope_from_headers
from mailsluice.contracts.events import Event, decode_event
from mailsluice.contracts.topics import EVENTS_TOPIC, queue_topic
from mailsluice.ingest.message import Trace
from mailsluice.ingest.service import IngestService
from mailsluice.ingest.settings import IngestSettings
from mailsluice.ingest.verdicts import IsSuppressed
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.resolver import DnsSettings
from support.tls import self_signed, trusting_client_context
from support.topic_reader import read_topic


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
        # The test DNS names MX hosts on 127.0.0.x, like the sandbox of `make run`.
        "allow_private_destinations": True,
        "shutdown_grace_s": 2.0,
    }
    values.update(overrides)
    return IngestSettings(**values)


@contextlib.asynccontextmanager
async def running_ingest(
    kafka_settings: KafkaSettings,
    nameserver: str,
    *,
    is_suppressed: IsSuppressed | None = None,
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


@contextlib.asynccontextmanager
async def running_auth_ingest(
    kafka_settings: KafkaSettings,
    nameserver: str,
    directory: Path,
    users_yaml: str,
    **overrides: Any,
) -> AsyncIterator[IngestService]:
    """Ingest with STARTTLS (a self-signed certificate in `directory`) and AUTH for the users
    of `users_yaml`; loopback is not trusted, so only authenticated users may relay."""
    cert, key = self_signed(directory, "ingest.test")
    users = directory / "users.yaml"
    users.write_text(users_yaml)
    async with running_ingest(
        kafka_settings,
        nameserver,
        is_suppressed=lambda _address, _scopes: False,
        trusted_networks="",
        tls_cert_file=str(cert),
        tls_key_file=str(key),
        credentials_file=str(users),
        **overrides,
    ) as service:
        yield service


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
            client.starttls(context=trusting_client_context())
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


async def accepts(port: int, *, greeting: bool = True) -> bool:
    """Whether the SMTP server on `port` takes a connection (and greets it, with `greeting`)."""
    try:
        client = await RawClient.connect(port, greeting=greeting)
    except OSError:
        return False
    await client.close()
    return True


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


# --- Kafka --------------------------------------------------------------------------------------


@dataclass
class QueuedRecord:
    key: str
    value: bytes
    envelope: Envelope
    topic: str
    partition: int


async def queued(
    settings: KafkaSettings,
    queue_id: str,
    *,
    pool: str = "default",
    expect: int,
) -> list[QueuedRecord]:
    """The records of one message in a pool's queue, once `expect` are there."""

    def match(record: Any) -> bool:
        return envelope_from_headers(record.headers).queue_id == queue_id

    records = await read_topic(settings, queue_topic(pool), match, expect=expect)
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
    )
    return [decode_event(r.value) for r in records]


def queue_id_of(reply: tuple[int, bytes] | None) -> str:
    assert reply is not None and reply[0] == 250, reply
    text = reply[1].decode()
    assert text.startswith("2.0.0 Ok: queued as "), text
    return text.rsplit(" ", 1)[1]


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
