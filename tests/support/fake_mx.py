"""Scriptable remote MX servers for delivery tests, and a wrapper around Postfix's smtp-sink.

FakeMx is an aiosmtpd server on its own event loop in a background thread, bound to one
loopback address and port, so sync tests (smtplib) and code on the test loop can both talk to it.
What it does is scripted by `MxScript`, which may be changed while it runs:

    mx = FakeMx("127.0.0.21", 2525).start()
    mx.script.data_reply = "451 4.3.0 Try again later"
    ...
    mx.wait_for_messages(1)
    mx.messages[0].rcpt_tos
    mx.stop()

Default recipient rules: a local part starting "defer" gets 450 4.2.0, "bounce" gets 550 5.1.1,
everything else 250 (tests/support/mx_script.py). The script, replies and records live in
support.mx_script, the smtp-sink wrapper in support.smtp_sink and the address helpers in
support.loopback; all their names are re-exported here for `from support.fake_mx import ...`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from support.loopback import free_port, next_loopback
from support.mx_script import (
    DROP_STAGES,
    R250_QUEUED,
    R421_GREETING,
    R450_DEFER,
    R451_DATA,
    R550_BOUNCE,
    MxScript,
    ReceivedMessage,
    default_rcpt_rules,
)
from support.smtp_sink import SmtpSink

__all__ = [
    "DATA_SIZE_LIMIT",
    "DROP_STAGES",
    "R250_QUEUED",
    "R421_GREETING",
    "R450_DEFER",
    "R451_DATA",
    "R550_BOUNCE",
    "FakeMx",
    "MxScript",
    "ReceivedMessage",
    "SmtpSink",
    "default_rcpt_rules",
    "free_port",
    "next_loopback",
]

DATA_SIZE_LIMIT = 64 * 1024 * 1024


class _ScriptedSMTP(SMTP):
    def __init__(self, fake: FakeMx, **kwargs: Any) -> None:
        super().__init__(fake, **kwargs)
        self._fake = fake
        self._drop = False

    async def _handle_client(self) -> None:
        fake = self._fake
        fake._connection_opened(self)
        script = fake.script
        if script.drop_at == "connect":
            self._close()
            return
        if script.delay:
            await asyncio.sleep(script.delay)
        if script.greeting is not None:
            self._writer.write(script.greeting.encode() + b"\r\n")
            await self._writer.drain()
            self._close()
            return
        await super()._handle_client()

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def drop_before_reply(self) -> None:
        self._drop = True

    async def push(self, status: Any) -> None:
        text = status.decode() if isinstance(status, bytes) else str(status)
        if self._fake.script.drop_at == "data" and text.startswith("354"):
            self._drop = True
        if self._drop:
            self._close()
            return
        await super().push(status)

    def connection_lost(self, error: Exception | None) -> None:
        self._fake._connection_closed(self)
        super().connection_lost(error)


class FakeMx:
    """A scriptable SMTP server on host:port (its own thread and event loop)."""

    def __init__(self, host: str | None = None, port: int = 0, **script: Any) -> None:
        self.host = host or next_loopback()
        self.port = port or free_port(self.host)
        self.script = MxScript(**script)
        self.messages: list[ReceivedMessage] = []
        self.connections = 0  # connections accepted
        self.transactions = 0  # MAIL FROM commands received
        self.rcpt_replies: list[tuple[str, str]] = []  # (recipient, reply) in order
        self._live: set[_ScriptedSMTP] = set()
        self._cond = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    # ----- lifecycle

    def start(self) -> FakeMx:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, daemon=True, name=self.address)
        self._thread.start()

        def factory() -> _ScriptedSMTP:
            return _ScriptedSMTP(
                self,
                hostname=f"fake-mx-{self.host}",
                ident="FakeMx",
                data_size_limit=DATA_SIZE_LIMIT,
                enable_SMTPUTF8=True,
                timeout=60,
                loop=loop,
            )

        async def serve() -> asyncio.base_events.Server:
            return await loop.create_server(factory, self.host, self.port, reuse_address=True)

        try:
            self._server = asyncio.run_coroutine_threadsafe(serve(), loop).result(10)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for proto in list(self._live):
                if proto.transport is not None:
                    proto.transport.close()
            for _ in range(50):
                if not self._live:
                    break
                await asyncio.sleep(0.01)
            current = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not current]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._server is not None:
                await self._server.wait_closed()

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(15)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()
            self._loop = self._thread = self._server = None

    def __enter__(self) -> FakeMx:
        return self.start() if self._loop is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----- bookkeeping (called on the server thread)

    def _connection_opened(self, proto: _ScriptedSMTP) -> None:
        with self._cond:
            self.connections += 1
            self._live.add(proto)
            self._cond.notify_all()

    def _connection_closed(self, proto: _ScriptedSMTP) -> None:
        with self._cond:
            self._live.discard(proto)
            self._cond.notify_all()

    @property
    def open_connections(self) -> int:
        with self._cond:
            return len(self._live)

    # ----- aiosmtpd handler hooks

    async def _pause(self) -> None:
        if self.script.delay:
            await asyncio.sleep(self.script.delay)

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
        if self.script.drop_at == "ehlo":
            server.drop_before_reply()
        return responses

    async def handle_HELO(
        self, server: _ScriptedSMTP, session: Session, envelope: Envelope, hostname: str
    ) -> str:
        await self._pause()
        session.host_name = hostname
        if self.script.drop_at == "ehlo":
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
        with self._cond:
            self.transactions += 1
        if self.script.drop_at == "mail":
            server.drop_before_reply()
        if self.script.mail_reply is not None:
            return self.script.mail_reply
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
        if self.script.drop_at == "rcpt":
            server.drop_before_reply()
        reply = self.script.reply_for_rcpt(address)
        with self._cond:
            self.rcpt_replies.append((address, reply))
        if reply.startswith("2"):
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
        return reply

    async def handle_DATA(self, server: _ScriptedSMTP, session: Session, envelope: Envelope) -> str:
        await self._pause()
        if self.script.drop_at == "dot":
            server.drop_before_reply()
            return R451_DATA
        if self.script.data_reply is not None:
            return self.script.data_reply
        raw = envelope.original_content or envelope.content or b""
        peer = session.peer
        message = ReceivedMessage(
            mail_from=str(envelope.mail_from),
            rcpt_tos=tuple(envelope.rcpt_tos),
            data=raw if isinstance(raw, bytes) else raw.encode(),
            received_at=time.time(),
            peer=(str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else (str(peer), 0),
            server=self.address,
        )
        with self._cond:
            self.messages.append(message)
            self._cond.notify_all()
        return R250_QUEUED

    # ----- waiting (sync and async)

    def wait_for_messages(self, count: int, timeout: float = 30.0) -> list[ReceivedMessage]:
        """Block until `count` messages arrived; return them (AssertionError on timeout)."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.messages) >= count, timeout):
                raise AssertionError(f"{self.address}: {len(self.messages)} of {count} messages")
            return list(self.messages)

    async def messages_arrived(self, count: int, within: float = 30.0) -> list[ReceivedMessage]:
        """Async form of wait_for_messages (polls, so it never blocks the event loop)."""
        deadline = time.monotonic() + within
        while len(self.messages) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.address}: {len(self.messages)} of {count} messages")
            await asyncio.sleep(0.02)
        return list(self.messages)

    def reset_records(self) -> None:
        with self._cond:
            self.messages.clear()
            self.rcpt_replies.clear()
            self.connections = 0
            self.transactions = 0
