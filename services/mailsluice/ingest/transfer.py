"""The connection's reader during a DATA transfer, in aiosmtpd's place of its StreamReader.

aiosmtpd reads the body a line at a time, and the connection's StreamReader has a line limit of
`line_length_limit` (1001 bytes), past which a line raises LimitOverrunError. Here the body comes
in blocks instead: everything up to the end-of-data line in one read, with the reader's limit
raised to BLOCK_LIMIT for that read. A block starts at the start of a line, so every CRLF in it
ends a line; the one case its search (CRLF "." CRLF) cannot see, a first line that is the
end-of-data line itself, is told from the reader's buffer, else that line is read alone.
aiosmtpd still gets the lines one by one, so its checks (line length, message size, dot
transparency) stay its own. A longer body comes in blocks of whole lines; a line longer than a
block, and bytes past what the transfer has reserved, come a line at a time at the
connection's own limit, as before.

Metering: once the bytes read pass what the transfer has reserved, it waits for another step
of the budget before handing on what it read: reading stops meanwhile, and TCP holds the client
back. Bytes past `limit` (max_message_size) reserve nothing: aiosmtpd discards them."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable
from typing import Any

from mailsluice.ingest import caps

# The most read at once for a block: a body's rest up to this comes in one read, a longer one
# in reads of the whole lines within this.
BLOCK_LIMIT = 64 * 1024
END_OF_DATA = b"\r\n.\r\n"
CRLF = b"\r\n"


class BudgetExhausted(ConnectionResetError):
    """The next step of the budget did not come in time during a transfer: the connection is
    closed (421 4.3.1) and nothing of the message is kept."""


class MeteredReader:
    """`take(n)` reserves n more bytes of the budget; False when they did not come in time."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        reserved: int,
        limit: int,
        take: Callable[[int], Awaitable[bool]],
    ) -> None:
        self._reader, self.reserved, self._limit, self._take = reader, reserved, limit, take
        self.received = 0
        self._lines: collections.deque[bytes] = collections.deque()
        self._blocks = True  # False once the rest was too long for a block
        self._line_limit: int = reader._limit  # type: ignore[attr-defined]
        self._part = b""  # a too-long line of a block, to be read without its CRLF

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        if not self._lines:
            if separator != CRLF or not self._blocks or not self._block_ahead():
                return await self._line(separator)
            block = await self._block()
            if block is None:
                return await self._line(separator)
            await self._account(len(block))
            lines = block.split(CRLF)
            lines.pop()  # the empty rest after the last CRLF
            self._lines.extend(line + CRLF for line in lines)
        line = self._lines.popleft()
        if len(line) - len(CRLF) > self._line_limit:
            # What the connection's reader does with a line past its limit, so that aiosmtpd
            # answers it as before: it reads the line up to its CRLF, then the CRLF.
            self._part = line[: -len(CRLF)]
            self._lines.appendleft(CRLF)
            raise asyncio.LimitOverrunError("the line is longer than the limit", len(self._part))
        return line

    async def read(self, n: int = -1) -> bytes:
        if self._part:  # already accounted with its block
            part, self._part = self._part, b""
            return part
        self._blocks = False  # aiosmtpd reads part of a too-long line: no longer at a line start
        data = await self._reader.read(n)
        await self._account(len(data))
        return data

    async def _line(self, separator: bytes) -> bytes:
        line = await self._reader.readuntil(separator)
        await self._account(len(line))
        return line

    def _block_ahead(self) -> bool:
        """Whether a block may be read: the bytes already received (asyncio keeps them in the
        reader's `_buffer`) show the next line is not the end-of-data line, and what the reader
        may buffer for a block (twice its limit, then it pauses the transport) is within what
        the transfer has reserved, so that the budget still bounds the memory held."""
        ahead: bytearray = self._reader._buffer  # type: ignore[attr-defined]
        return (
            self.reserved - self.received >= 2 * BLOCK_LIMIT
            and len(ahead) >= len(END_OF_DATA) - 2
            and not ahead.startswith(END_OF_DATA[2:])
        )

    async def _block(self) -> bytes | None:
        """The body's rest up to and with its end-of-data line; when that is longer than a
        block, the whole lines of the block; None (and a line at a time from now on) when its
        first line is longer than a block."""
        reader = self._reader
        line_limit = reader._limit  # type: ignore[attr-defined]
        reader._limit = BLOCK_LIMIT  # type: ignore[attr-defined]
        try:
            return await reader.readuntil(END_OF_DATA)
        except asyncio.LimitOverrunError as exc:
            # No end-of-data line within the block (exc.consumed: where the search stopped, or
            # where the end-of-data line starts past the limit): the lines up to there.
            buffered: bytearray = reader._buffer  # type: ignore[attr-defined]
            end = buffered.rfind(CRLF, 0, exc.consumed + len(CRLF))
            if end < 0:
                self._blocks = False  # the bytes stay in the reader, read a line at a time
                return None
            return await reader.readexactly(end + len(CRLF))
        finally:
            reader._limit = line_limit  # type: ignore[attr-defined]

    async def _account(self, n: int) -> None:
        self.received += n
        while self.received > self.reserved and self.reserved < self._limit:
            step = min(caps.DATA_STEP, self._limit - self.reserved)
            if not await self._take(step):
                raise BudgetExhausted("no budget for the rest of the message")
            self.reserved += step

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)
