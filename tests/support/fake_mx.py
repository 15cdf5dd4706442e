"""The one fake remote MX of the tests, and a wrapper around Postfix's smtp-sink.

FakeMx is an aiosmtpd server on its own event loop in a background thread, bound to one
loopback address and port, so sync tests (smtplib) and code on the test loop can both talk to it.
It accepts everything unless a recipient address asks for a fault, or its script (`MxScript`,
changeable while it runs) says otherwise:

    mx = FakeMx("127.0.0.21", 2525).start()
    ...send to ok@x.test, tempfail@x.test, data-451+7@x.test...
    mx.wait_for_messages(1)            # or: await mx.messages_arrived(1)
    mx.messages[0].rcpt_tos            # what it accepted
    mx.rcpt_replies                    # (recipient, reply) in order
    mx.sessions[0].wire                # the exact bytes of the first connection
    mx.script.data_reply = R451_DATA   # from now on, refuse every message after its body
    mx.stop()

Faults by address, no script needed. The local part, up to an optional "+tag" (so that many
distinct recipients can ask for the same fault: tempfail+1@, tempfail+2@), names the fault,
in any case; every other address is accepted:

    tempfail@           RCPT gets 450 4.2.0 Mailbox temporarily unavailable
    permfail@           RCPT gets 550 5.1.1 No such user here
    rcpt-NNN@           RCPT gets NNN (4xx or 5xx) with its usual enhanced code and text,
    rcpt-NNN-X.Y.Z@     or with enhanced code X.Y.Z: rcpt-452@ is 452 4.5.3 Too many recipients
    defer-421@          RCPT gets 421 4.7.0, then the server closes the connection
    drop@               no reply to RCPT: the server closes the connection
    slow-S@             RCPT gets 250 after S seconds (slow-1.5@)
    data-NNN@           RCPT gets 250; the end of DATA of a transaction that includes it
    data-NNN-X.Y.Z@     gets NNN instead of acceptance (the message is not recorded)

What an address cannot ask, because it happens before any recipient, the script says: a
`greeting` instead of the banner (a 421), a `silent` server that accepts and never greets,
`ehlo=False` (a HELO-only server), `pipelining=False` (no PIPELINING offered, which it is by
default), `broken_tls` (STARTTLS offered, its handshake answered with garbage), `mail_reply`,
`data_reply`, `chaos` (the sandbox MX's pattern and probability rules, mailsluice.sandbox.chaos),
a `delay` before every reply, `drop_at` a stage (with `drop_once`, on one
connection only), and `rcpt_reply(address)` for anything else. With `tls_context=` it offers
real STARTTLS, and each ReceivedMessage says whether it came encrypted.

Every connection is recorded (`sessions`): the bytes the server read, exactly as sent, with the
command verbs and each DATA phase's dot-stuffed bytes parsed out. The script, reply texts and
records live in support.mx_script, the smtp-sink wrapper (Postfix's, kept for speed and its own
fault flags) in support.smtp_sink and the address helpers in support.loopback; their names are
re-exported here.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from support.eventually import eventually, eventually_sync
from support.loop_thread import LoopThread
from support.loopback import free_port, next_loopback
from support.mx_script import (
    DROP_STAGES,
    R250_QUEUED,
    R421_CLOSING,
    R421_GREETING,
    R450_DEFER,
    R451_DATA,
    R502_NO_EHLO,
    R550_BOUNCE,
    Fault,
    MxScript,
    MxSession,
    ReceivedMessage,
    address_fault,
    reply_text,
)
from support.smtp_sink import SmtpSink

__all__ = [
    "DATA_SIZE_LIMIT",
    "DROP_STAGES",
    "R250_QUEUED",
    "R421_CLOSING",
    "R421_GREETING",
    "R450_DEFER",
    "R451_DATA",
    "R550_BOUNCE",
    "FakeMx",
    "Fault",
    "MxScript",
    "MxSession",
    "ReceivedMessage",
    "SmtpSink",
    "address_fault",
    "free_port",
    "next_loopback",
    "reply_text",
]

DATA_SIZE_LIMIT = 64 * 1024 * 1024
NOT_TLS = b"this is not a TLS server hello\r\n" * 4


class _Recording:
    """Bookkeeping shared by both kinds of connection: opened, bytes read, closed."""

    fake: FakeMx
    record: MxSession

    def _note_open(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self.record = self.fake._opened(self, (str(peer[0]), int(peer[1])))

    def _note_closed(self) -> None:
        self.fake._closed(self)


class _BeforeGreeting(_Recording, asyncio.Protocol):
    """A connection that never reaches SMTP: dropped, refused with a greeting, or silent."""

    def __init__(self, fake: FakeMx, script: MxScript) -> None:
        self.fake = fake
        self.script = script
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._note_open(transport)
        if self.script.drops("connect"):
            transport.close()
        elif self.script.greeting is not None:
            asyncio.get_running_loop().call_later(self.script.delay, self._refuse)

    def _refuse(self) -> None:
        if self.transport is not None and self.script.greeting is not None:
            self.transport.write(self.script.greeting.encode() + b"\r\n")
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.record.wire += data

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._note_closed()


class _ScriptedSMTP(_Recording, SMTP):
    def __init__(self, fake: FakeMx, **kwargs: Any) -> None:
        super().__init__(fake, **kwargs)
        self.fake = fake
        self._greeted = False
        self._drop = False
        self._close_after_reply = False
        self._recording = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._greeted:  # not the second call that STARTTLS makes
            self._note_open(transport)
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._recording:
            self.record.wire += data
        super().data_received(data)

    def connection_lost(self, error: Exception | None) -> None:
        self._note_closed()
        super().connection_lost(error)

    def hang_up(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def drop_before_reply(self) -> None:
        self._drop = True

    def close_after_reply(self) -> None:
        self._close_after_reply = True

    async def push(self, status: Any) -> None:
        text = status.decode() if isinstance(status, bytes) else str(status)
        script = self.fake.script
        if not self._greeted:
            self._greeted = True
            if script.delay:
                await asyncio.sleep(script.delay)  # a slow banner is what the script asks
        if text.startswith("354") and script.drops("data"):
            self._drop = True
        if self._drop:
            self.hang_up()
            return
        if text.startswith("354"):
            self.record.body_starts.append(len(self.record.wire))
        await super().push(status)
        if self._close_after_reply:
            self.hang_up()

    async def smtp_EHLO(self, hostname: str) -> None:
        if not self.fake.script.ehlo:
            await self.push(R502_NO_EHLO)
            return
        await super().smtp_EHLO(hostname)

    async def smtp_STARTTLS(self, arg: str) -> None:
        if not self.fake.script.broken_tls:
            await super().smtp_STARTTLS(arg)
            return
        await self.push("220 2.0.0 Ready to start TLS")
        self._recording = False  # what follows is the client's TLS handshake, not SMTP
        assert self.transport is not None
        self.transport.write(NOT_TLS)
        self.hang_up()


class FakeMx:
    """A scriptable SMTP server on host:port (its own thread and event loop)."""

    def __init__(
        self,
        host: str | None = None,
        port: int = 0,
        *,
        tls_context: ssl.SSLContext | None = None,
        **script: Any,
    ) -> None:
        self.host = host or next_loopback()
        self.port = port or free_port(self.host)
        self.tls_context = tls_context
        self.script = MxScript(**script)
        self.messages: list[ReceivedMessage] = []
        self.sessions: list[MxSession] = []  # every connection, in the order accepted
        self.transactions = 0  # MAIL FROM commands received
        self.rcpt_replies: list[tuple[str, str]] = []  # (recipient, reply) in order
        self._live: set[_Recording] = set()
        self._lock = threading.Lock()
        self._thread = LoopThread(self.address)
        self._server: asyncio.base_events.Server | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def connections(self) -> int:
        """Connections accepted."""
        return len(self.sessions)

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._live)

    # ----- lifecycle

    def start(self) -> FakeMx:
        def factory() -> asyncio.BaseProtocol:
            script = self.script
            if script.drop_at == "connect" or script.greeting is not None or script.silent:
                return _BeforeGreeting(self, script)
            return _ScriptedSMTP(
                self,
                hostname=f"fake-mx-{self.host}",
                ident="FakeMx",
                data_size_limit=DATA_SIZE_LIMIT,
                enable_SMTPUTF8=True,
                tls_context=self.tls_context,
                timeout=60,
                loop=self._thread.loop,
            )

        async def serve(loop: asyncio.AbstractEventLoop) -> asyncio.base_events.Server:
            return await loop.create_server(factory, self.host, self.port, reuse_address=True)

        self._server = self._thread.start(serve)
        return self

    def stop(self) -> None:
        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for proto in list(self._live):
                transport = getattr(proto, "transport", None)
                if transport is not None:
                    transport.abort()
            await eventually(lambda: not self._live, within=5, what="its connections to close")
            if self._server is not None:
                await self._server.wait_closed()

        try:
            self._thread.stop(shutdown)
        finally:
            self._server = None

    def __enter__(self) -> FakeMx:
        return self if self._thread.running else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----- bookkeeping (called on the server thread)

    def _opened(self, proto: _Recording, peer: tuple[str, int]) -> MxSession:
        record = MxSession(peer)
        with self._lock:
            self.sessions.append(record)
            self._live.add(proto)
        return record

    def _closed(self, proto: _Recording) -> None:
        with self._lock:
            if proto in self._live:
                self._live.discard(proto)
                proto.record.open = False

    # ----- aiosmtpd handler hooks

    async def _pause(self) -> None:
        if self.script.delay:
            await asyncio.sleep(self.script.delay)  # a slow server is what the script asks

    async def handle_EHLO(
        self,
        server: _ScriptedSMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        await self._pause()
        session.host_name = hostname
        if self.script.drops("ehlo"):
            server.drop_before_reply()
        if self.script.broken_tls and "250-STARTTLS" not in responses:
            responses.insert(-1, "250-STARTTLS")
        if self.script.pipelining:  # aiosmtpd reads pipelined commands, but does not say so
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_HELO(
        self, server: _ScriptedSMTP, session: Session, envelope: Envelope, hostname: str
    ) -> str:
        await self._pause()
        session.host_name = hostname
        if self.script.drops("ehlo"):
            server.drop_before_reply()
        return f"250 {server.hostname}"

    async def handle_MAIL(
        self,
        server: _ScriptedSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        await self._pause()
        with self._lock:
            self.transactions += 1
        if self.script.drops("mail"):
            server.drop_before_reply()
        if self.script.mail_reply is not None:
            return self.script.mail_reply
        chaotic = self.script.chaos_reply("mail", [address])
        if chaotic is not None:
            if chaotic.startswith("421"):
                server.close_after_reply()
            return chaotic
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self,
        server: _ScriptedSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        await self._pause()
        fault = self.script.fault_for_rcpt(address)
        if fault.delay:
            await asyncio.sleep(fault.delay)  # slow-S@: a slow answer is what it asks
        if fault.rcpt_reply is None or self.script.drops("rcpt"):
            server.drop_before_reply()
            return R421_CLOSING  # never sent
        if fault.close:
            server.close_after_reply()
        with self._lock:
            self.rcpt_replies.append((address, fault.rcpt_reply))
        if fault.rcpt_reply.startswith("2"):
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
        return fault.rcpt_reply

    async def handle_DATA(self, server: _ScriptedSMTP, session: Session, envelope: Envelope) -> str:
        await self._pause()
        if self.script.drops("dot"):
            server.drop_before_reply()
            return R451_DATA
        if self.script.data_reply is not None:
            return self.script.data_reply
        chaotic = self.script.chaos_reply("data", list(envelope.rcpt_tos))
        if chaotic is not None:
            if chaotic.startswith("421"):
                server.close_after_reply()
            return chaotic
        for rcpt in envelope.rcpt_tos:
            refused = address_fault(rcpt).data_reply
            if refused is not None:
                return refused
        raw = envelope.original_content or envelope.content or b""
        peer = session.peer
        message = ReceivedMessage(
            mail_from=str(envelope.mail_from),
            rcpt_tos=tuple(envelope.rcpt_tos),
            data=raw if isinstance(raw, bytes) else raw.encode(),
            received_at=time.time(),
            peer=(str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else (str(peer), 0),
            server=self.address,
            tls=session.ssl is not None,
        )
        with self._lock:
            self.messages.append(message)
        return R250_QUEUED

    # ----- waiting (sync and async)

    def wait_for_messages(self, count: int, timeout: float = 30.0) -> list[ReceivedMessage]:
        """Block until `count` messages arrived; return them (AssertionError on timeout)."""
        eventually_sync(
            lambda: len(self.messages) >= count,
            within=timeout,
            what=f"{count} messages at {self.address}",
            detail=lambda: f"{len(self.messages)} arrived",
        )
        return list(self.messages)

    async def messages_arrived(self, count: int, within: float = 30.0) -> list[ReceivedMessage]:
        """Async form of wait_for_messages."""
        await eventually(
            lambda: len(self.messages) >= count,
            within=within,
            what=f"{count} messages at {self.address}",
            detail=lambda: f"{len(self.messages)} arrived",
        )
        return list(self.messages)

    def reset_records(self) -> None:
        with self._lock:
            self.messages.clear()
            self.rcpt_replies.clear()
            self.sessions.clear()
            self.transactions = 0
