"""SMTP PIPELINING (RFC 2920) for the delivery client: a reader that takes over a connection's
transport while a pipelined group's replies come in, since aiosmtplib cannot read them.

aiosmtplib's `SMTPProtocol.data_received` parses one reply per call and drops whatever arrives
while a parsed reply waits for pickup, so several replies in one TCP segment (or one arriving
before the previous was read) would be lost. aiosmtplib has no hook to choose its protocol
class, and uvloop caches `protocol.data_received` when a protocol is set, so patching the method
on an instance does nothing. Instead `ReplyReader.attach` calls the documented
`transport.set_protocol` (asyncio and uvloop, plain or TLS transports alike) to put a small
protocol of ours in place, which buffers and parses every reply in order, and puts aiosmtplib's
protocol back when the transaction is done.

What this relies on in aiosmtplib (tests/delivery/transport/test_aiosmtplib_contract.py fails
if a release changes it):
- `SMTP.protocol` is the connection's `SMTPProtocol`, and its `transport` attribute the
  transport it writes to (after STARTTLS, the TLS one);
- `SMTPProtocol._buffer` holds bytes received but not yet parsed (taken over here, left empty);
- between commands the protocol waits with `_response_pending` False and a fresh, not-done
  `_response_waiter`; neither is touched here, so aiosmtplib's next command finds them as it
  left them;
- `SMTPProtocol.write` refuses a closing transport (SMTPServerDisconnected), `_paused` says
  whether the transport asked it to pause writing, and `_drain_helper` waits while it is;
  `pause_writing`, `resume_writing`, `eof_received` and `connection_lost` are forwarded to it,
  so flow control and its connection-lost callback (which closes the `SMTP` object) work as if
  it had stayed in place;
- `SMTPResponse(code, message)`, and a reply's message as aiosmtplib builds it: each line's
  text after the code and separator, stripped, lines joined with "\\n".
"""

from __future__ import annotations

import asyncio
import collections
from typing import cast

import aiosmtplib
from aiosmtplib.protocol import SMTPProtocol

MAX_LINE = 8192  # as aiosmtplib: a longer reply line is an error
MAX_UNPARSED = MAX_LINE * 4  # bytes of one unfinished reply (a stream without line ends)
INVALID_RESPONSE = -1  # aiosmtplib's code for a malformed reply


class ReplyReader(asyncio.Protocol):
    """The connection's protocol while a pipelined group is under way: every reply that
    arrives is parsed and queued; `reply()` takes them in order."""

    def __init__(self, owner: SMTPProtocol, transport: asyncio.Transport) -> None:
        self._owner = owner
        self._transport = transport
        self._buffer = bytearray(owner._buffer)  # normally empty: nothing was unread
        owner._buffer.clear()
        self._replies: collections.deque[aiosmtplib.SMTPResponse] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._error: Exception | None = None

    @classmethod
    def attach(cls, smtp: aiosmtplib.SMTP) -> ReplyReader:
        """A reader in place of `smtp`'s protocol until `detach()`."""
        owner = smtp.protocol
        transport = owner.transport if owner is not None else None
        if owner is None or transport is None or transport.is_closing():
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        reader = cls(owner, cast(asyncio.Transport, transport))
        transport.set_protocol(reader)
        return reader

    def detach(self) -> None:
        """aiosmtplib's protocol back in place; bytes after the last reply read are dropped,
        as aiosmtplib drops data nobody asked for. A closing transport keeps the reader, which
        forwards connection_lost."""
        transport = self._transport
        if not transport.is_closing() and transport.get_protocol() is self:
            transport.set_protocol(self._owner)

    # --- what the transaction calls --------------------------------------------------------

    def write(self, data: bytes) -> None:
        self._owner.write(data)

    async def drain(self, limit_s: float) -> None:
        """Wait while the transport's write buffer is over its high-water mark."""
        if not self._owner._paused:  # the usual case: no wait_for (it would make a task)
            return
        try:
            await asyncio.wait_for(self._owner._drain_helper(), limit_s)
        except TimeoutError as exc:
            raise aiosmtplib.SMTPReadTimeoutError("timed out sending the message") from exc

    async def reply(self, limit_s: float) -> aiosmtplib.SMTPResponse:
        """The next reply in order, waiting at most `limit_s` for it; a drop raises
        SMTPServerDisconnected once every reply that came before it has been read."""
        if not self._replies and self._error is None:
            # A timer on our own future: cheaper than wait_for, and most replies of a group
            # are already here when asked for.
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            timer = loop.call_later(limit_s, _expire, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        if self._replies:
            return self._replies.popleft()
        assert self._error is not None
        raise self._error

    # --- asyncio.Protocol ------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._error is not None:
            return
        self._buffer += data
        try:
            self._parse()
        except aiosmtplib.SMTPResponseException as exc:
            self._fail(exc)
            return
        if self._replies:
            self._wake()

    def eof_received(self) -> bool:
        self._fail(aiosmtplib.SMTPServerDisconnected("Unexpected EOF received"))
        return bool(self._owner.eof_received())

    def connection_lost(self, exc: Exception | None) -> None:
        error = aiosmtplib.SMTPServerDisconnected("Connection lost")
        error.__cause__ = exc
        self._fail(error)
        self._owner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._owner.pause_writing()

    def resume_writing(self) -> None:
        self._owner.resume_writing()

    # --- parsing ---------------------------------------------------------------------------

    def _parse(self) -> None:
        """Move every complete reply out of the buffer, in order."""
        buf = self._buffer
        start = 0
        while True:
            parsed = parse_reply(buf, start)
            if parsed is None:
                break
            reply, start = parsed
            self._replies.append(reply)
        del buf[:start]
        if len(buf) > MAX_UNPARSED:
            raise aiosmtplib.SMTPResponseException(INVALID_RESPONSE, "Response too long")

    def _fail(self, error: Exception) -> None:
        if self._error is None:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(
            aiosmtplib.SMTPReadTimeoutError("Timed out waiting for server response")
        )


def parse_reply(
    buf: bytes | bytearray, start: int = 0
) -> tuple[aiosmtplib.SMTPResponse, int] | None:
    """The complete reply at `start` of `buf` and the offset after it; None when the reply is
    not complete yet. A line that is too long or has no code raises SMTPResponseException."""
    message = bytearray()
    pos = start
    while True:
        end = buf.find(b"\n", pos)
        if end < 0:
            if len(buf) - pos > MAX_LINE:
                raise aiosmtplib.SMTPResponseException(INVALID_RESPONSE, "Response too long")
            return None
        line = bytes(buf[pos : end + 1])
        pos = end + 1
        if len(line) > MAX_LINE:
            raise aiosmtplib.SMTPResponseException(INVALID_RESPONSE, "Response too long")
        try:
            code = int(line[:3])
        except ValueError:
            text = line.decode("utf-8", errors="ignore")
            raise aiosmtplib.SMTPResponseException(
                INVALID_RESPONSE, f"Malformed SMTP response line: {text}"
            ) from None
        if message:  # as aiosmtplib joins lines: empty leading lines leave no newline
            message += b"\n"
        message += line[4:].strip(b" \t\r\n")
        if line[3:4] != b"-":
            return aiosmtplib.SMTPResponse(code, message.decode("utf-8", "surrogateescape")), pos
