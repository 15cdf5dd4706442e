"""The DATA reader hands aiosmtpd the same lines as the connection's own reader would, reads
them in far fewer reads, leaves what follows the end-of-data line unread, and puts the
reader's line limit back."""

from __future__ import annotations

import asyncio
import random

import pytest

from mailsluice.ingest import caps, transfer

LINE_LIMIT = 1001  # aiosmtpd's line_length_limit, the limit of its StreamReader
AFTER = b"MAIL FROM:<next@b.test>\r\nRCPT TO:<x@y.test>\r\n"  # a pipelining client's next

BODIES = {
    "empty": b".\r\n",
    "one line": b"Subject: x\r\n.\r\n",
    "the end second": b"a\r\n.\r\n",
    "an empty line before the end": b"a\r\n\r\n.\r\n",
    "lines ending in a dot": b"Hello.\r\nBye.\r\n.\r\n",
    "stuffed dots": b"..\r\n...x\r\n.a\r\n.\r\n",
    "bare CR and LF": b"a\rb\nc\r\n\n.\r\n\r.\r\n.\r\n",
    "smuggled ends": b"a\n.\nMAIL FROM:<x@y.test>\r\n\r.\r\n.\rb\r\n.\r\n",
    "a long line": b"x" * 5000 + b"\r\n.\r\n",
    "lines about the limit": b"a" * 1001
    + b"\r\n"
    + b"b" * 1002
    + b"\r\n"
    + b"c" * 999
    + b"\r\n.\r\n",
    "longer than a block": b"y" * 80 + b"\r\n" * 1000 + b"z\r\n" * 30000 + b".\r\n",
}


async def _lines(reader: asyncio.StreamReader | transfer.MeteredReader) -> list[bytes]:
    """aiosmtpd's DATA loop, reduced: lines up to the end-of-data line, a too-long one read
    as its fragments as aiosmtpd does."""
    lines: list[bytes] = []
    while True:
        try:
            line = await reader.readuntil(b"\r\n")
        except asyncio.LimitOverrunError as exc:
            line = await reader.read(exc.consumed)
        if line == b".\r\n":
            return lines
        lines.append(line)


def _reader(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    reader.feed_data(data)
    return reader


async def _untaken(n: int) -> bool:
    raise AssertionError(f"no budget step expected ({n})")


def _metered(reader: asyncio.StreamReader) -> transfer.MeteredReader:
    return transfer.MeteredReader(reader, 10**9, 10**9, _untaken)


@pytest.mark.parametrize("body", BODIES.values(), ids=list(BODIES))
async def test_the_same_lines_as_line_by_line_and_the_rest_left_unread(body: bytes) -> None:
    plain, ours = _reader(body + AFTER), _reader(body + AFTER)
    assert await _lines(_metered(ours)) == await _lines(plain)
    assert bytes(ours._buffer) == bytes(plain._buffer) == AFTER  # type: ignore[attr-defined]
    assert ours._limit == LINE_LIMIT  # type: ignore[attr-defined]


async def test_a_body_arriving_in_pieces_gives_the_same_lines() -> None:
    rng = random.Random(7)
    body = b"".join(
        rng.choice([b"a.\r\n", b"..b\r\n", b"\r\n", b"c" * 300 + b"\r\n"]) for _ in range(400)
    )
    body += b".\r\n"
    expected = await _lines(_reader(body + AFTER))
    reader = asyncio.StreamReader(limit=LINE_LIMIT)

    async def feed() -> None:
        data, at = body + AFTER, 0
        while at < len(data):
            step = rng.choice([1, 2, 3, 50, 4000])
            reader.feed_data(data[at : at + step])
            at += step
            await asyncio.sleep(0)

    feeding = asyncio.create_task(feed())
    assert await _lines(_metered(reader)) == expected
    await feeding
    assert bytes(reader._buffer) == AFTER  # type: ignore[attr-defined]


class CountingReader(asyncio.StreamReader):
    def __init__(self) -> None:
        super().__init__(limit=LINE_LIMIT)
        self.reads = 0

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        self.reads += 1
        return await super().readuntil(separator)


async def test_a_body_in_the_buffer_is_one_read_not_one_per_line() -> None:
    reader = CountingReader()
    reader.feed_data(b"Subject: x\r\n\r\n" + b"line.\r\n" * 300 + b".\r\n")
    lines = await _lines(_metered(reader))
    assert len(lines) == 302
    assert reader.reads == 1


async def test_a_cancelled_read_puts_the_line_limit_back() -> None:
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    reader.feed_data(b"Subject: x\r\n")  # no end yet: the block read waits
    metered = _metered(reader)
    waiting = asyncio.create_task(metered.readuntil(b"\r\n"))
    await asyncio.sleep(0)
    assert reader._limit == transfer.BLOCK_LIMIT  # type: ignore[attr-defined]
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert reader._limit == LINE_LIMIT  # type: ignore[attr-defined]


async def test_a_block_past_the_reservation_waits_for_the_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(caps, "DATA_STEP", 4096)
    taken: list[int] = []

    async def take(n: int) -> bool:
        taken.append(n)
        return len(taken) < 2

    body = b"x" * 900 + b"\r\n"
    reader = _reader(b"first\r\n" + body * 40 + b".\r\n")
    metered = transfer.MeteredReader(reader, 1000, 10**9, take)
    with pytest.raises(transfer.BudgetExhausted):
        await _lines(metered)
    assert taken == [4096, 4096]  # the first step came, the second did not


async def test_a_long_body_comes_in_blocks_of_whole_lines() -> None:
    body = b"".join(b"line %d\r\n" % n for n in range(40_000)) + b".\r\n"  # ~390 KiB
    expected = await _lines(_reader(body + AFTER))
    reader = CountingReader()
    reader.feed_data(body + AFTER)
    assert await _lines(_metered(reader)) == expected
    assert reader.reads < 2 * len(body) // transfer.BLOCK_LIMIT + 2  # not one per line
    assert bytes(reader._buffer) == AFTER  # type: ignore[attr-defined]


async def test_past_the_reservation_a_line_at_a_time() -> None:
    """What the reader would buffer for a block is kept within what was reserved: with less
    left, each line is read (and metered) alone, as aiosmtpd would."""
    reader = CountingReader()
    reader.feed_data(b"a\r\n" * 100 + b".\r\n")
    metered = transfer.MeteredReader(reader, 2 * transfer.BLOCK_LIMIT - 1, 10**9, _untaken)
    assert len(await _lines(metered)) == 100
    assert reader.reads == 101
