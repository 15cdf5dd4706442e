"""SMTP PIPELINING (RFC 2920) in the delivery client, against real servers on 127.0.0.x: a raw
server that answers a group only once DATA arrived, all at once or byte by byte
(support.raw_mx), the fake MX (aiosmtpd, offering PIPELINING by default) and Postfix's
smtp-sink; and the reply reader fed a group's replies cut at every place."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
from aiosmtplib.protocol import SMTPProtocol
from support.raw_mx import GO_AHEAD, OK_RCPT, RawMx
from support.tls import server_context
from support.transport import MESSAGE, envelope, settings

from mailsluice.delivery.transport.client import RecipientResult, Transport
from mailsluice.delivery.transport.pipelining import ReplyReader

REFUSED = "550 5.1.1 No such user here"
CLOSING = "421 4.7.0 Too many errors, closing connection"


@pytest.fixture
def raw_mx() -> Iterator[Callable[..., RawMx]]:
    started: list[RawMx] = []

    def make(**script: Any) -> RawMx:
        mx = RawMx(**script).start()
        started.append(mx)
        return mx

    yield make
    for mx in started:
        mx.stop()


def outcome(results: list[RecipientResult]) -> list[tuple[str, int, str, str]]:
    return [(r.recipient.partition("@")[0], r.code, r.enhanced, r.phase) for r in results]


def refuse_bad(address: str) -> str:
    return REFUSED if address.startswith("bad") else OK_RCPT


def to(mx: Any, transports: Callable[..., Transport], **kw: Any) -> Transport:
    return cast(Transport, transports(settings(static_routes=f"*={mx.address}", **kw)))


# --- replies coalesced, split, refused ---------------------------------------------------------


@pytest.mark.parametrize("split", [False, True], ids=["one-write", "byte-by-byte"])
async def test_group_replies_read_in_order(raw_mx, transports, split: bool) -> None:
    mx = raw_mx(split=split, rcpt=refuse_bad)
    t = to(mx, transports)
    rcpts = ("a@x.test", "bad1@x.test", "b@x.test", "bad2@x.test")
    for _ in range(2):  # the second on the same connection: nothing left over, nothing lost
        results = await t.send(envelope(*rcpts), MESSAGE)
        assert outcome(results) == [
            ("a", 250, "2.0.0", "data"),
            ("bad1", 550, "5.1.1", "rcpt"),
            ("b", 250, "2.0.0", "data"),
            ("bad2", 550, "5.1.1", "rcpt"),
        ]
    assert len(mx.bodies) == 2 and b"Subject: hi" in mx.bodies[0]
    assert mx.connections == 1
    verbs = [c.split(" ")[0] for c in mx.commands]
    assert verbs == ["EHLO"] + ["MAIL", "RCPT", "RCPT", "RCPT", "RCPT", "DATA"] * 2


async def test_multiline_replies_split_across_segments(raw_mx, transports) -> None:
    mx = raw_mx(
        split=True,
        mail="250-2.1.0 first line\r\n250 2.1.0 Ok",
        rcpt=lambda a: "450-4.2.0 busy,\r\n450-4.2.0 come back\r\n450 4.2.0 later",
    )
    (result,) = await to(mx, transports).send(envelope("a@x.test"), MESSAGE)
    assert (result.code, result.enhanced, result.phase) == (450, "4.2.0", "rcpt")
    assert "come back" in result.text and "later" in result.text
    assert mx.bodies == []


async def test_mail_refused_gives_every_recipient_its_reply(fake_mx, transports) -> None:
    mx = fake_mx(mail_reply="452 4.3.1 Insufficient system storage")
    t = to(mx, transports)
    results = await t.send(envelope("a@x.test", "b@x.test"), MESSAGE)
    assert outcome(results) == [("a", 452, "4.3.1", "mail"), ("b", 452, "4.3.1", "mail")]
    # The RCPT and DATA replies (503s) were read: the connection is still in step.
    mx.script.mail_reply = None
    results = await t.send(envelope("c@x.test"), MESSAGE)
    assert outcome(results) == [("c", 250, "2.0.0", "data")]
    assert t.connections_opened == 1
    assert mx.sessions[0].commands() == (
        ["EHLO", "MAIL", "RCPT", "RCPT", "DATA", "RSET", "MAIL", "RCPT", "DATA"]
    )


async def test_all_recipients_refused_sends_no_body(fake_mx, transports) -> None:
    mx = fake_mx()
    t = to(mx, transports)
    results = await t.send(envelope("permfail@x.test", "tempfail@x.test"), MESSAGE)
    assert outcome(results) == [
        ("permfail", 550, "5.1.1", "rcpt"),
        ("tempfail", 450, "4.2.0", "rcpt"),
    ]
    assert mx.sessions[0].body_starts == []  # DATA got 503: no 354, no body
    assert outcome(await t.send(envelope("ok@x.test"), MESSAGE)) == [("ok", 250, "2.0.0", "data")]
    assert t.connections_opened == 1


async def test_data_refused_goes_to_accepted_recipients(raw_mx, transports) -> None:
    mx = raw_mx(rcpt=refuse_bad, data="451 4.3.0 Try again later")
    results = await to(mx, transports).send(envelope("a@x.test", "bad@x.test"), MESSAGE)
    assert outcome(results) == [("a", 451, "4.3.0", "data"), ("bad", 550, "5.1.1", "rcpt")]
    assert mx.bodies == []


async def test_354_without_accepted_recipient_sends_only_the_end_of_data(
    raw_mx, transports
) -> None:
    mx = raw_mx(rcpt=lambda a: REFUSED, data=GO_AHEAD)  # a broken server
    t = to(mx, transports)
    results = await t.send(envelope("a@x.test", "b@x.test"), MESSAGE)
    assert outcome(results) == [("a", 550, "5.1.1", "rcpt"), ("b", 550, "5.1.1", "rcpt")]
    assert mx.bodies == [b""]  # "." alone: the message never went out
    mx.script.rcpt, mx.script.data = (lambda a: OK_RCPT), None
    assert outcome(await t.send(envelope("c@x.test"), MESSAGE)) == [("c", 250, "2.0.0", "data")]
    assert mx.connections == 1
    assert "RSET" in mx.commands


async def test_large_body_waits_for_the_transport(raw_mx, transports) -> None:
    # Far over the transport's high-water mark: writing pauses until the server has read.
    mx = raw_mx()
    line = b"x" * 998 + b"\r\n"
    message = b"Subject: big\r\n\r\n" + line * 8000
    (result,) = await to(mx, transports).send(envelope("a@x.test"), message)
    assert (result.code, result.phase) == (250, "data")
    assert mx.bodies == [message]


async def test_pipelined_over_starttls(fake_mx, transports, tmp_path) -> None:
    # The reader takes over the TLS transport (asyncio's SSL protocol under uvloop) as well.
    mx = fake_mx(tls_context=server_context(tmp_path, "mx.tls.test"))
    t = to(mx, transports, tls_policy="required")
    for _ in range(2):
        results = await t.send(envelope("a@x.test", "permfail@x.test"), MESSAGE)
        assert outcome(results) == [("a", 250, "2.0.0", "data"), ("permfail", 550, "5.1.1", "rcpt")]
    assert [m.tls for m in await mx.messages_arrived(2)] == [True, True]
    assert t.connections_opened == 1


# --- 421, drops, stale connections -------------------------------------------------------------


async def test_421_mid_group_answers_the_rest_and_closes(fake_mx, transports) -> None:
    mx = fake_mx()
    t = to(mx, transports)
    rcpts = ("one@x.test", "permfail@x.test", "defer-421@x.test", "three@x.test")
    results = await t.send(envelope(*rcpts), MESSAGE)
    assert outcome(results) == [
        ("one", 421, "4.7.0", "rcpt"),
        ("permfail", 550, "5.1.1", "rcpt"),
        ("defer-421", 421, "4.7.0", "rcpt"),
        ("three", 421, "4.7.0", "rcpt"),
    ]
    assert mx.messages == []
    assert outcome(await t.send(envelope("four@x.test"), MESSAGE))[0][1] == 250
    assert t.connections_opened == 2


async def test_421_to_mail_closes(raw_mx, transports) -> None:
    mx = raw_mx(mail=CLOSING)
    t = to(mx, transports)
    results = await t.send(envelope("a@x.test", "b@x.test"), MESSAGE)
    assert outcome(results) == [("a", 421, "4.7.0", "mail"), ("b", 421, "4.7.0", "mail")]
    mx.script.mail = "250 2.1.0 Ok"
    assert outcome(await t.send(envelope("c@x.test"), MESSAGE))[0][1] == 250
    assert t.connections_opened == 2


async def test_421_from_smtp_sink_mid_group(smtp_sink, transports) -> None:
    sink = smtp_sink(extra_args=["-Q", "rcpt"])
    results = await to(sink, transports).send(envelope("a@x.test", "b@x.test"), MESSAGE)
    assert [(r.code, r.phase) for r in results] == [(421, "rcpt"), (421, "rcpt")]


@pytest.mark.parametrize(("close_after", "phase"), [(1, "rcpt"), (2, "rcpt"), (3, "data")], ids=str)
async def test_server_closing_mid_group(raw_mx, transports, close_after: int, phase: str) -> None:
    mx = raw_mx(close_after=close_after)  # replies: MAIL, RCPT, RCPT, DATA
    results = await to(mx, transports).send(envelope("a@x.test", "b@x.test"), MESSAGE)
    assert [(r.code, r.enhanced, r.phase) for r in results] == [(451, "4.4.2", phase)] * 2
    assert mx.bodies == []


@pytest.mark.parametrize(("stage", "phase"), [("rcpt", "rcpt"), ("data", "data"), (".", "data")])
async def test_smtp_sink_dropping_mid_transaction(
    smtp_sink, transports, stage: str, phase: str
) -> None:
    sink = smtp_sink(extra_args=["-q", stage])
    results = await to(sink, transports).send(envelope("a@x.test", "b@x.test"), MESSAGE)
    assert [(r.code, r.enhanced, r.phase) for r in results] == [(451, "4.4.2", phase)] * 2


async def test_dead_pooled_connection_is_replaced(fake_mx, transports) -> None:
    mx = fake_mx()
    t = to(mx, transports)
    assert outcome(await t.send(envelope("a@x.test"), MESSAGE))[0][1] == 250
    mx.script.drop_at, mx.script.drop_once = "mail", True  # the pooled one dies at MAIL
    assert outcome(await t.send(envelope("b@x.test"), MESSAGE)) == [("b", 250, "2.0.0", "data")]
    assert t.connections_opened == 2


async def test_fresh_connection_dropped_at_mail_is_a_result(fake_mx, transports) -> None:
    mx = fake_mx(drop_at="mail")
    (result,) = await to(mx, transports).send(envelope("a@x.test"), MESSAGE)
    assert (result.code, result.enhanced, result.phase) == (451, "4.4.2", "mail")


async def test_timeout_waiting_for_a_reply_in_the_group(fake_mx, transports) -> None:
    mx = fake_mx()
    t = to(mx, transports, rcpt_timeout_s=0.3)
    results = await t.send(envelope("a@x.test", "slow-5@x.test", "b@x.test"), MESSAGE)
    assert [(r.code, r.phase) for r in results] == [(451, "rcpt")] * 3
    assert "Timed out" in results[0].text
    assert mx.messages == []


# --- servers without PIPELINING ------------------------------------------------------------------


async def test_without_pipelining_one_command_at_a_time(raw_mx, transports) -> None:
    mx = raw_mx(pipelining=False, rcpt=refuse_bad)
    t = to(mx, transports)
    results = await t.send(envelope("a@x.test", "bad@x.test", "b@x.test"), MESSAGE)
    assert [r.code for r in results] == [250, 550, 250]
    assert mx.batched == 0  # every command waited for the reply before it
    assert len(mx.bodies) == 1


async def test_smtp_sink_without_pipelining(smtp_sink, transports) -> None:
    sink = smtp_sink(extra_args=["-p"], dump=True)
    t = to(sink, transports)
    results = await t.send(envelope("a@x.test", "b@x.test"), MESSAGE)
    assert [r.kind for r in results] == ["delivered"] * 2


async def test_smtp_sink_pipelined_on_one_connection(smtp_sink, transports) -> None:
    sink = smtp_sink()  # offers PIPELINING and answers a group in one write
    t = to(sink, transports)
    for i in range(20):
        results = await t.send(envelope(f"a{i}@x.test", f"b{i}@x.test"), MESSAGE)
        assert [r.kind for r in results] == ["delivered"] * 2
    assert t.connections_opened == 1


# --- the reader alone ---------------------------------------------------------------------------

GROUP = b"250 2.1.0 Ok\r\n550-5.1.1 No such\r\n550 5.1.1 user\r\n250 2.1.5 Ok\r\n354 End data\r\n"
EXPECTED = [
    (250, "2.1.0 Ok"),
    (550, "5.1.1 No such\n5.1.1 user"),
    (250, "2.1.5 Ok"),
    (354, "End data"),
]


class _Transport:
    """What a ReplyReader asks of the transport it was not attached to."""

    def is_closing(self) -> bool:
        return False


async def test_reader_parses_a_group_cut_anywhere() -> None:
    for i in range(len(GROUP) + 1):
        for j in range(i, len(GROUP) + 1):
            owner = SMTPProtocol(loop=asyncio.get_running_loop())
            reader = ReplyReader(owner, cast(asyncio.Transport, _Transport()))
            for part in (GROUP[:i], GROUP[i:j], GROUP[j:]):
                reader.data_received(part)
            got = [await reader.reply(1.0) for _ in EXPECTED]
            assert [(r.code, r.message) for r in got] == EXPECTED, (i, j)


async def test_reader_hands_over_replies_before_the_drop() -> None:
    owner = SMTPProtocol(loop=asyncio.get_running_loop())
    reader = ReplyReader(owner, cast(asyncio.Transport, _Transport()))
    reader.data_received(b"250 2.1.0 Ok\r\n421 4.7.0 Closing\r\n")
    reader.eof_received()
    assert [(await reader.reply(1.0)).code for _ in range(2)] == [250, 421]
    with pytest.raises(Exception, match="EOF"):
        await reader.reply(1.0)
