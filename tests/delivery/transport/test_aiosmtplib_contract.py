"""What the delivery transport relies on in aiosmtplib; this module fails when an aiosmtplib
release changes it (the list is in mailsluice.delivery.transport.pipelining's docstring; the
DATA write of connection.send_data uses `_response_pending` and `_drain_helper` too).

- The shapes: SMTPProtocol's private attributes and methods, SMTPResponse, the exceptions.
- On a real connection (a raw server on loopback, the test loop being uvloop): the protocol's
  state between commands, a ReplyReader taking the transport over and handing it back, and
  a drop while it is attached reaching aiosmtplib's SMTP object.
- The reply format: parse_reply agrees with aiosmtplib's own parser.
- Why the reader exists: aiosmtplib drops a reply that arrives while another awaits pickup.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator
from typing import Any

import aiosmtplib
import pytest
import uvloop
from aiosmtplib.protocol import SMTPProtocol
from support.eventually import eventually
from support.raw_mx import RawMx

from mailsluice.delivery.transport.pipelining import ReplyReader, parse_reply


@pytest.fixture
async def session() -> AsyncIterator[aiosmtplib.SMTP]:
    mx = RawMx().start()
    smtp = aiosmtplib.SMTP(hostname=mx.host, port=mx.port, start_tls=False)
    try:
        await smtp.connect(timeout=5)
        await smtp.ehlo(timeout=5)
        yield smtp
    finally:
        smtp.close()
        mx.stop()


class _StubTransport:
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def is_closing(self) -> bool:
        return False


def test_shapes() -> None:
    proto = SMTPProtocol(loop=asyncio.new_event_loop())
    try:
        assert isinstance(proto._buffer, bytearray)
        assert proto._response_pending is False
        assert proto._paused is False
        proto.pause_writing()
        assert proto._paused is True
        proto.resume_writing()
        assert proto._paused is False
        assert proto._response_waiter is None  # until connection_made
        assert proto.transport is None
        assert inspect.iscoroutinefunction(proto._drain_helper)
        assert inspect.iscoroutinefunction(proto.read_response)
        for name in ("write", "eof_received", "connection_lost", "pause_writing"):
            assert callable(getattr(proto, name)), name
        assert callable(proto.resume_writing)
    finally:
        proto._loop.close()
    assert list(inspect.signature(SMTPProtocol.write).parameters) == ["self", "data"]
    assert aiosmtplib.SMTPResponse(250, "ok") == (250, "ok")
    assert aiosmtplib.SMTPResponse(250, "ok").code == 250
    assert issubclass(aiosmtplib.SMTPReadTimeoutError, aiosmtplib.SMTPTimeoutError)
    assert issubclass(aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPException)
    assert aiosmtplib.SMTPResponseException(-1, "x").code == -1


async def test_state_between_commands(session: aiosmtplib.SMTP) -> None:
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
    proto = session.protocol
    assert isinstance(proto, SMTPProtocol)
    assert proto.transport is not None
    assert proto.transport.get_protocol() is proto
    assert proto._response_pending is False
    assert proto._response_waiter is not None and not proto._response_waiter.done()
    assert proto._buffer == bytearray()


async def test_reader_takes_over_and_hands_back(session: aiosmtplib.SMTP) -> None:
    proto = session.protocol
    assert proto is not None and proto.transport is not None
    transport = proto.transport
    reader = ReplyReader.attach(session)
    assert transport.get_protocol() is reader
    reader.write(b"NOOP\r\nRSET\r\nNOOP\r\n")  # three replies, likely in one segment
    assert [(await reader.reply(5.0)).code for _ in range(3)] == [250, 250, 250]
    reader.detach()
    assert transport.get_protocol() is proto
    assert proto._response_pending is False and proto._buffer == bytearray()
    assert (await session.execute_command(b"NOOP", timeout=5)).code == 250


async def test_drop_while_attached_reaches_the_smtp_object(session: aiosmtplib.SMTP) -> None:
    reader = ReplyReader.attach(session)
    reader.write(b"QUIT\r\n")
    assert (await reader.reply(5.0)).code == 221
    with pytest.raises(aiosmtplib.SMTPServerDisconnected):
        await reader.reply(5.0)
    await eventually(lambda: session.protocol is None, within=5, what="SMTP closed")
    assert not session.is_connected
    reader.detach()  # harmless on a closed transport


SAMPLES = [
    b"250 2.1.0 Ok\r\n",
    b"250-first\r\n250-second \r\n250 last\r\n",
    b"250-\r\n250 after an empty line\r\n",
    b"550 5.1.1 \xff not utf-8\r\n",
    b"354\r\n",
    b"421 bare LF\n",
]


@pytest.mark.parametrize("sample", SAMPLES)
def test_parse_reply_agrees_with_aiosmtplib(sample: bytes) -> None:
    proto = SMTPProtocol(loop=asyncio.new_event_loop())
    try:
        proto._buffer.extend(sample)
        theirs = proto._read_response_from_buffer()
    finally:
        proto._loop.close()
    parsed = parse_reply(sample)
    assert parsed is not None and theirs is not None
    assert parsed == (theirs, len(sample))


@pytest.mark.parametrize("sample", [b"xyz not a code\r\n", b"250 " + b"x" * 9000 + b"\r\n"])
def test_malformed_replies_raise_like_aiosmtplib(sample: bytes) -> None:
    proto = SMTPProtocol(loop=asyncio.new_event_loop())
    try:
        proto._buffer.extend(sample)
        with pytest.raises(aiosmtplib.SMTPResponseException):
            proto._read_response_from_buffer()
    finally:
        proto._loop.close()
    with pytest.raises(aiosmtplib.SMTPResponseException):
        parse_reply(sample)


async def test_aiosmtplib_still_drops_a_second_reply() -> None:
    """If this fails, aiosmtplib may read pipelined replies itself: the reader could go."""
    proto = SMTPProtocol(loop=asyncio.get_running_loop())
    proto.connection_made(_StubTransport())  # type: ignore[arg-type]
    proto.data_received(b"250 first\r\n")
    proto.data_received(b"250 second\r\n")  # a parsed reply waits for pickup: dropped
    assert (await proto.read_response(timeout=1)).message == "first"
    assert proto._buffer == bytearray()
