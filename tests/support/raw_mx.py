"""A raw SMTP server for the pipelining tests, writing its replies byte for byte as told.

With PIPELINING (the default) it holds the replies to MAIL and RCPT until DATA has arrived,
so only a client that really pipelines gets an answer, then writes the whole group's replies
in one write (one TCP segment: the client must read several replies from one read), or with
`split=True` one byte per write with TCP_NODELAY (replies cut across segments). A 421 reply
is followed by closing the connection; `close_after=N` closes after N replies of a group
without a 421. Without PIPELINING it answers each command as it comes, and counts in `batched`
the reads that brought more than one command (a client that did not wait for a reply).

It runs on its own event loop thread (support.loop_thread), on a loopback address:

    mx = RawMx(rcpt=lambda a: "550 5.1.1 No" if a.startswith("bad") else OK_RCPT).start()
    ...
    mx.commands    # every command line received, in order
    mx.bodies      # each DATA phase's bytes, up to and without the final "."
    mx.stop()
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from support.loop_thread import LoopThread
from support.loopback import free_port, next_loopback

OK_MAIL = "250 2.1.0 Ok"
OK_RCPT = "250 2.1.5 Ok"
OK_QUEUED = "250 2.0.0 Ok: queued"
GO_AHEAD = "354 End data with <CR><LF>.<CR><LF>"
NO_RECIPIENTS = "554 5.5.1 Error: no valid recipients"


def _accept(address: str) -> str:
    return OK_RCPT


@dataclass
class RawScript:
    """What a RawMx answers; replies may be multi-line ("250-first\\r\\n250 last")."""

    pipelining: bool = True
    split: bool = False
    mail: str = OK_MAIL
    rcpt: Callable[[str], str] = _accept
    data: str | None = None  # None: 354 when a recipient was accepted, else NO_RECIPIENTS
    end: str = OK_QUEUED
    close_after: int | None = None


@dataclass
class _Group:
    replies: list[str] = field(default_factory=list)
    accepted: int = 0


class _Session(asyncio.Protocol):
    def __init__(self, mx: RawMx) -> None:
        self.mx = mx
        self.script = mx.script
        self.buf = bytearray()
        self.in_body = False
        self.scanned = 0
        self.group = _Group()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        sock = self.transport.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.mx._live.add(self)
        self._send(["220 raw-mx ESMTP"])

    def connection_lost(self, exc: Exception | None) -> None:
        self.mx._live.discard(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        commands = 0
        while self.transport is not None and not self.transport.is_closing():
            if self.in_body:
                if not self._take_body():
                    return
                continue
            end = self.buf.find(b"\r\n")
            if end < 0:
                return
            line = bytes(self.buf[:end]).decode("utf-8", "replace")
            del self.buf[: end + 2]
            commands += 1
            if commands == 2 and not self.script.pipelining:
                self.mx.batched += 1
            self._command(line)

    def _take_body(self) -> bool:
        if self.buf.startswith(b".\r\n"):
            body, size = b"", 3
        else:
            end = self.buf.find(b"\r\n.\r\n", self.scanned)
            if end < 0:
                self.scanned = max(0, len(self.buf) - 4)  # a large body: scan each byte once
                return False
            body, size = bytes(self.buf[: end + 2]), end + 5
        del self.buf[:size]
        self.in_body, self.scanned = False, 0
        self.mx.bodies.append(body)
        self._send([self.script.end])
        return True

    def _command(self, line: str) -> None:
        self.mx.commands.append(line)
        verb, _, arg = line.partition(" ")
        verb = verb.upper()
        if verb in ("EHLO", "HELO"):
            offers = ["PIPELINING"] if self.script.pipelining else []
            lines = ["raw-mx", *offers, "8BITMIME"]
            ehlo = [f"250-{x}" for x in lines[:-1]] + [f"250 {lines[-1]}"]
            self._send(["\r\n".join(ehlo)])
        elif verb == "MAIL":
            self.group = _Group()
            self._answer(self.script.mail)
        elif verb == "RCPT":
            reply = self.script.rcpt(arg.partition(":")[2].strip("<>"))
            self.group.accepted += reply.startswith("2")
            self._answer(reply)
        elif verb == "DATA":
            data = self.script.data or (GO_AHEAD if self.group.accepted else NO_RECIPIENTS)
            self.in_body = data.startswith("354")
            self._answer(data)
            if self.script.pipelining:
                self._send(self.group.replies, self.script.close_after)
        elif verb == "QUIT":
            self._send(["221 2.0.0 Bye"])
            self._close()
        else:  # RSET, NOOP
            self._send(["250 2.0.0 Ok"])

    def _answer(self, reply: str) -> None:
        if self.script.pipelining:
            self.group.replies.append(reply)
        else:
            self._send([reply])

    def _send(self, replies: list[str], close_after: int | None = None) -> None:
        out = bytearray()
        for count, reply in enumerate(replies, 1):
            out += reply.encode() + b"\r\n"
            if reply.startswith("421") or count == close_after:
                self._write(bytes(out))
                self._close()
                return
        self._write(bytes(out))

    def _write(self, data: bytes) -> None:
        assert self.transport is not None
        if not self.script.split:
            self.transport.write(data)
            return
        for i in range(len(data)):
            self.transport.write(data[i : i + 1])

    def _close(self) -> None:
        self.in_body = False
        if self.transport is not None:
            self.transport.close()


class RawMx:
    def __init__(self, host: str | None = None, **script: object) -> None:
        self.host = host or next_loopback()
        self.port = free_port(self.host)
        self.script = RawScript(**script)  # type: ignore[arg-type]
        self.commands: list[str] = []
        self.bodies: list[bytes] = []
        self.batched = 0
        self.connections = 0
        self._live: set[_Session] = set()
        self._thread = LoopThread(f"raw-mx {self.address}")
        self._server: asyncio.base_events.Server | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> RawMx:
        def factory() -> asyncio.Protocol:
            self.connections += 1
            return _Session(self)

        async def serve(loop: asyncio.AbstractEventLoop) -> asyncio.base_events.Server:
            return await loop.create_server(factory, self.host, self.port, reuse_address=True)

        self._server = self._thread.start(serve)
        return self

    def stop(self) -> None:
        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for session in list(self._live):
                if session.transport is not None:
                    session.transport.abort()

        self._thread.stop(shutdown)
        self._server = None
