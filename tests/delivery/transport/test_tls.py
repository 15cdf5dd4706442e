"""STARTTLS: opportunistic upgrade, required policy, a broken handshake, and old HELO servers."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Session
from aiosmtpd.smtp import Envelope as SmtpEnvelope

from mailsluice.contracts.envelope import Envelope
from mailsluice.delivery.transport.client import Transport
from mailsluice.delivery.transport.settings import OutboundSettings
from mailsluice.resolver import DnsSettings, make_resolver

MESSAGE = b"Subject: tls\r\n\r\nbody\r\n"


def envelope(*rcpts: str) -> Envelope:
    return Envelope(
        queue_id="Q",
        pool="default",
        sender="a@sender.test",
        recipients=rcpts,
        routing_key="example.test",
        received_at=time.time(),
    )


def transport(port: int, **kw: Any) -> Transport:
    s = OutboundSettings(
        static_routes=f"*=127.0.0.1:{port}",
        ehlo_name="out.test",
        command_timeout_s=5,
        greeting_timeout_s=5,
        data_end_timeout_s=5,
        **kw,
    )
    return Transport(s, make_resolver(DnsSettings(nameservers="127.0.0.1:9")))


@pytest.fixture(scope="module")
def server_tls(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    d: Path = tmp_path_factory.mktemp("tls")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=mx.tls.test",
            "-keyout",
            str(d / "key.pem"),
            "-out",
            str(d / "cert.pem"),
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(d / "cert.pem", d / "key.pem")
    return context


class Recorder:
    def __init__(self) -> None:
        self.tls: list[bool] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: SmtpEnvelope) -> str:
        self.tls.append(session.ssl is not None)
        return "250 2.0.0 Ok"


@pytest.fixture
async def tls_mx(server_tls: ssl.SSLContext) -> AsyncIterator[tuple[int, Recorder]]:
    recorder = Recorder()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(recorder, tls_context=server_tls, hostname="mx.tls.test", loop=loop),
        "127.0.0.1",
        0,
    )
    try:
        yield server.sockets[0].getsockname()[1], recorder
    finally:
        server.close()
        await server.wait_closed()


async def test_opportunistic_upgrades_when_offered(tls_mx) -> None:
    port, recorder = tls_mx
    t = transport(port)
    try:
        for _ in range(2):  # the second rides the pooled, already encrypted connection
            (result,) = await t.send(envelope("a@example.test"), MESSAGE)
            assert result.kind == "delivered", result
    finally:
        await t.close()
    assert recorder.tls == [True, True]
    assert t.connections_opened == 1


async def test_required_policy_with_tls_delivers(tls_mx) -> None:
    port, recorder = tls_mx
    t = transport(port, tls_policy="required")
    try:
        (result,) = await t.send(envelope("a@example.test"), MESSAGE)
    finally:
        await t.close()
    assert result.kind == "delivered"
    assert recorder.tls == [True]


async def test_policy_none_stays_plaintext(tls_mx) -> None:
    port, recorder = tls_mx
    t = transport(port, tls_policy="none")
    try:
        (result,) = await t.send(envelope("a@example.test"), MESSAGE)
    finally:
        await t.close()
    assert result.kind == "delivered"
    assert recorder.tls == [False]


async def test_verify_rejects_self_signed_when_required(tls_mx) -> None:
    port, recorder = tls_mx
    t = transport(port, tls_policy="required", tls_verify=True)
    try:
        (result,) = await t.send(envelope("a@example.test"), MESSAGE)
    finally:
        await t.close()
    assert (result.code, result.enhanced, result.kind) == (451, "4.7.5", "transient")
    assert recorder.tls == []


class BrokenTlsMx:
    """Offers STARTTLS, then answers the handshake with garbage; plaintext works."""

    def __init__(self, helo_only: bool = False) -> None:
        self.helo_only = helo_only
        self.sessions: list[list[bytes]] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> BrokenTlsMx:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        commands: list[bytes] = []
        self.sessions.append(commands)
        writer.write(b"220 broken ESMTP\r\n")
        try:
            while line := await reader.readline():
                verb = line[:4].upper()
                commands.append(verb)
                if verb == b"EHLO":
                    if self.helo_only:
                        writer.write(b"502 5.5.2 Command not recognized\r\n")
                    else:
                        writer.write(b"250-broken\r\n250 STARTTLS\r\n")
                elif verb == b"STAR":
                    writer.write(b"220 2.0.0 Ready\r\n")
                    await writer.drain()
                    writer.write(b"this is not a TLS server hello\r\n" * 4)
                    await writer.drain()
                    break
                elif verb == b"DATA":
                    writer.write(b"354 go\r\n")
                    await writer.drain()
                    await reader.readuntil(b"\r\n.\r\n")
                    writer.write(b"250 2.0.0 ok\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    await writer.drain()
                    break
                else:
                    writer.write(b"250 ok\r\n")
                await writer.drain()
        finally:
            writer.close()


async def test_broken_tls_falls_back_to_plaintext_when_opportunistic() -> None:
    mx = await BrokenTlsMx().start()
    t = transport(mx.port)
    try:
        (result,) = await t.send(envelope("a@example.test"), MESSAGE)
    finally:
        await t.close()
        await mx.stop()
    assert result.kind == "delivered", result
    assert mx.sessions[0][:2] == [b"EHLO", b"STAR"]
    assert b"STAR" not in mx.sessions[1] and b"DATA" in mx.sessions[1]


async def test_broken_tls_defers_when_required() -> None:
    mx = await BrokenTlsMx().start()
    t = transport(mx.port, tls_policy="required")
    try:
        (result,) = await t.send(envelope("a@example.test"), MESSAGE)
    finally:
        await t.close()
        await mx.stop()
    assert (result.code, result.enhanced, result.kind) == (451, "4.7.5", "transient")
    assert len(mx.sessions) == 1


async def test_helo_only_server() -> None:
    mx = await BrokenTlsMx(helo_only=True).start()
    t = transport(mx.port)
    try:
        (result,) = await t.send(envelope("a@example.test"), MESSAGE)
    finally:
        await t.close()
        await mx.stop()
    assert result.kind == "delivered", result
    assert mx.sessions[0][:3] == [b"EHLO", b"HELO", b"MAIL"]
