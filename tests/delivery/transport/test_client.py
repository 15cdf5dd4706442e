"""Transport.send against real SMTP servers on 127.0.0.x: fake MXes (faults asked for by the
recipient address or scripted per test, the exact bytes on the wire recorded) and Postfix's
smtp-sink."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aiosmtplib
import pytest
from support.eventually import eventually
from support.fake_mx import R421_GREETING, SmtpSink, free_port
from support.transport import MESSAGE, envelope, settings

from mailsluice.delivery.transport.client import RecipientResult, Transport, wire_data
from mailsluice.resolver import DnsSettings, make_resolver


def kinds(results: list[RecipientResult]) -> list[str]:
    return [r.kind for r in results]


async def test_accepts_and_reports_per_recipient(fake_mx, transports) -> None:
    mx = fake_mx()
    t = transports(settings(static_routes=f"example.test={mx.address}"))
    results = await t.send(
        envelope(
            "ok@example.test",
            "tempfail+1@example.test",
            "permfail+1@example.test",
            "ok2@example.test",
        ),
        MESSAGE,
    )
    assert [(r.recipient, r.code, r.enhanced) for r in results] == [
        ("ok@example.test", 250, "2.0.0"),
        ("tempfail+1@example.test", 450, "4.2.0"),
        ("permfail+1@example.test", 550, "5.1.1"),
        ("ok2@example.test", 250, "2.0.0"),
    ]
    assert kinds(results) == ["delivered", "transient", "permanent", "delivered"]
    assert results[0].remote == f"{mx.host}:{mx.port}"
    assert results[2].text == "No such user here"
    (msg,) = await mx.messages_arrived(1)
    assert msg.rcpt_tos == ("ok@example.test", "ok2@example.test")
    assert msg.mail_from == "a@sender.test"
    assert msg.data.replace(b"\r\n", b"\n") == MESSAGE.replace(b"\r\n", b"\n")


async def test_null_sender_and_ehlo_name(fake_mx, transports) -> None:
    mx = fake_mx()
    t = transports(settings(static_routes=f"*={mx.address}"))
    results = await t.send(envelope("x@example.test", sender=""), MESSAGE)
    assert kinds(results) == ["delivered"]
    (msg,) = await mx.messages_arrived(1)
    assert msg.mail_from == "<>"


async def test_451_after_data_is_transient_for_accepted_only(fake_mx, transports) -> None:
    mx = fake_mx(data_reply="451 4.3.0 Local error")
    t = transports(settings(static_routes=f"*={mx.address}"))
    results = await t.send(envelope("a@example.test", "permfail@example.test"), MESSAGE)
    assert [(r.code, r.enhanced) for r in results] == [(451, "4.3.0"), (550, "5.1.1")]


async def test_mail_from_refused(fake_mx, transports) -> None:
    mx = fake_mx(mail_reply="452 4.3.1 Insufficient system storage")
    t = transports(settings(static_routes=f"*={mx.address}"))
    results = await t.send(envelope("a@example.test", "b@example.test"), MESSAGE)
    assert {(r.code, r.enhanced) for r in results} == {(452, "4.3.1")}


async def test_421_at_rcpt_closes_and_defers_the_rest(fake_mx, transports) -> None:
    mx = fake_mx(pipelining=False)  # one command at a time: the third RCPT is never sent
    t = transports(settings(static_routes=f"*={mx.address}"))
    results = await t.send(
        envelope("one@example.test", "defer-421@example.test", "three@example.test"), MESSAGE
    )
    assert [r.code for r in results] == [421, 421, 421]
    assert kinds(results) == ["transient"] * 3
    assert mx.messages == []
    assert [a for a, _ in mx.rcpt_replies] == ["one@example.test", "defer-421@example.test"]


async def test_slow_server_times_out_transient(fake_mx, transports) -> None:
    mx = fake_mx(delay=1.5)
    t = transports(settings(static_routes=f"*={mx.address}", greeting_timeout_s=0.5))
    results = await t.send(envelope("a@example.test"), MESSAGE)
    assert results[0].kind == "transient"
    assert (results[0].code, results[0].enhanced) == (451, "4.4.2")
    assert "Timed out" in results[0].text or "timed out" in results[0].text


async def test_slow_rcpt_reply_times_out(fake_mx, transports) -> None:
    mx = fake_mx(delay=0.6)  # every reply comes after 0.6 s; only RCPT's limit is shorter
    t = transports(settings(static_routes=f"*={mx.address}", rcpt_timeout_s=0.3))
    results = await t.send(envelope("a@example.test", "b@example.test"), MESSAGE)
    assert [(r.code, r.enhanced) for r in results] == [(451, "4.4.2")] * 2
    assert mx.messages == []


@pytest.mark.parametrize("stage", ["connect", "ehlo", "mail", "rcpt", "data", "dot"])
async def test_dropped_connection_is_transient(fake_mx, transports, stage: str) -> None:
    mx = fake_mx(drop_at=stage)
    t = transports(settings(static_routes=f"*={mx.address}"))
    results = await t.send(envelope("a@example.test", "b@example.test"), MESSAGE)
    assert kinds(results) == ["transient", "transient"], results
    assert {r.enhanced for r in results} <= {"4.4.1", "4.4.2"}


async def test_connection_refused_is_transient(transports) -> None:
    port = free_port("127.0.0.1")  # nothing listens there
    t = transports(settings(static_routes=f"*=127.0.0.1:{port}"))
    (result,) = await t.send(envelope("a@example.test"), MESSAGE)
    assert (result.code, result.enhanced, result.kind) == (451, "4.4.1", "transient")


async def test_starttls_required_but_not_offered(fake_mx, transports) -> None:
    mx = fake_mx()
    t = transports(settings(static_routes=f"*={mx.address}", tls_policy="required"))
    (result,) = await t.send(envelope("a@example.test"), MESSAGE)
    assert (result.code, result.enhanced, result.kind) == (451, "4.7.4", "transient")
    assert mx.transactions == 0


async def test_connection_reuse(fake_mx, transports) -> None:
    mx = fake_mx()
    t = transports(settings(static_routes=f"*={mx.address}", messages_per_connection=4))
    for i in range(10):
        results = await t.send(envelope(f"r{i}@example.test"), MESSAGE)
        assert kinds(results) == ["delivered"]
    await mx.messages_arrived(10)
    assert mx.connections == 3  # 4 + 4 + 2
    assert t.connections_opened == 3


async def test_reuse_after_refused_transaction_uses_rset(fake_mx, transports) -> None:
    mx = fake_mx()
    t = transports(settings(static_routes=f"*={mx.address}"))
    assert kinds(await t.send(envelope("permfail@example.test"), MESSAGE)) == ["permanent"]
    assert kinds(await t.send(envelope("ok@example.test"), MESSAGE)) == ["delivered"]
    assert mx.connections == 1
    (msg,) = await mx.messages_arrived(1)
    assert msg.rcpt_tos == ("ok@example.test",)


async def test_idle_connections_are_closed(fake_mx, transports) -> None:
    mx = fake_mx()
    t = transports(settings(static_routes=f"*={mx.address}", idle_keep_s=0.2))
    assert kinds(await t.send(envelope("a@example.test"), MESSAGE)) == ["delivered"]
    assert mx.open_connections == 1
    await eventually(lambda: mx.open_connections == 0, within=5, what="the idle connection closed")
    assert kinds(await t.send(envelope("b@example.test"), MESSAGE)) == ["delivered"]
    assert mx.connections == 2


async def test_server_closed_idle_connection_is_replaced(fake_mx, transports) -> None:
    mx = fake_mx()
    t = transports(settings(static_routes=f"*={mx.address}"))
    assert kinds(await t.send(envelope("a@example.test"), MESSAGE)) == ["delivered"]
    mx.stop()  # closes the pooled connection under us
    mx2 = fake_mx(host=mx.host, port=mx.port)
    assert kinds(await t.send(envelope("b@example.test"), MESSAGE)) == ["delivered"]
    assert len(await mx2.messages_arrived(1)) == 1


async def test_recipients_of_different_domains_are_routed_apart(fake_mx, transports) -> None:
    mx1, mx2 = fake_mx(), fake_mx()
    t = transports(settings(static_routes=f"one.test={mx1.address},two.test={mx2.address}"))
    results = await t.send(
        envelope("a@one.test", "b@two.test", "c@one.test", "d@nowhere.test"), MESSAGE
    )
    assert [r.recipient for r in results] == [
        "a@one.test",
        "b@two.test",
        "c@one.test",
        "d@nowhere.test",
    ]
    assert kinds(results)[:3] == ["delivered"] * 3
    assert (await mx1.messages_arrived(1))[0].rcpt_tos == ("a@one.test", "c@one.test")
    assert (await mx2.messages_arrived(1))[0].rcpt_tos == ("b@two.test",)


# --- MX routing through the test DNS server ------------------------------------------------


async def test_421_greeting_falls_back_to_next_mx(fake_mx, dns_zone, transports) -> None:
    port = free_port("127.0.0.1")
    first = fake_mx(host="127.0.3.11", port=port, greeting=R421_GREETING)
    second = fake_mx(host="127.0.3.12", port=port)
    dns_zone.set_mx("fallback.test", [(10, "mx1.fallback.test"), (20, "mx2.fallback.test")])
    dns_zone.set_a("mx1.fallback.test", [first.host])
    dns_zone.set_a("mx2.fallback.test", [second.host])
    t = transports(settings(port=port, allow_private_destinations=True), dns_zone)
    (result,) = await t.send(envelope("a@fallback.test"), MESSAGE)
    assert result.kind == "delivered"
    assert result.remote == f"mx2.fallback.test[127.0.3.12]:{port}"
    assert first.connections == 1 and first.transactions == 0
    assert len(await second.messages_arrived(1)) == 1


async def test_all_mx_down_is_transient(dns_zone, transports) -> None:
    port = free_port("127.0.0.1")
    dns_zone.set_mx("down.test", [(10, "mx1.down.test"), (20, "mx2.down.test")])
    dns_zone.set_a("mx1.down.test", ["127.0.3.21"])
    dns_zone.set_a("mx2.down.test", ["127.0.3.22"])
    t = transports(settings(port=port, allow_private_destinations=True), dns_zone)
    (result,) = await t.send(envelope("a@down.test"), MESSAGE)
    assert (result.code, result.enhanced, result.kind) == (451, "4.4.1", "transient")


async def test_implicit_mx(fake_mx, dns_zone, transports) -> None:
    port = free_port("127.0.0.1")
    mx = fake_mx(host="127.0.3.31", port=port)
    dns_zone.set_a("implicit.test", [mx.host])
    t = transports(settings(port=port, allow_private_destinations=True), dns_zone)
    (result,) = await t.send(envelope("a@implicit.test"), MESSAGE)
    assert result.kind == "delivered"
    assert result.remote == f"implicit.test[127.0.3.31]:{port}"


async def test_null_mx_nxdomain_servfail(dns_zone, transports) -> None:
    dns_zone.set_null_mx("nullmx.test")
    dns_zone.set_nxdomain("gone.test")
    dns_zone.set_servfail("broken.test")
    t = transports(settings(allow_private_destinations=True), dns_zone)
    results = await t.send(envelope("a@nullmx.test", "b@gone.test", "c@broken.test"), MESSAGE)
    assert [(r.code, r.enhanced, r.kind) for r in results] == [
        (556, "5.1.10", "permanent"),
        (550, "5.1.2", "permanent"),
        (450, "4.4.3", "transient"),
    ]


async def test_mx_to_private_address_refused_unless_static(fake_mx, dns_zone, transports) -> None:
    port = free_port("127.0.0.1")
    mx = fake_mx(host="127.0.3.41", port=port)
    dns_zone.set_mx("private.test", [(10, "mx.private.test")])
    dns_zone.set_a("mx.private.test", [mx.host])
    refused = transports(settings(port=port), dns_zone)
    (result,) = await refused.send(envelope("a@private.test"), MESSAGE)
    assert (result.code, result.enhanced, result.kind) == (554, "5.4.4", "permanent")
    assert mx.connections == 0
    # A static route naming the host by name is trusted: configuration chose it.
    named = transports(settings(static_routes=f"private.test=mx.private.test:{port}"), dns_zone)
    (result,) = await named.send(envelope("a@private.test"), MESSAGE)
    assert result.kind == "delivered"
    assert mx.connections == 1


# --- what goes on the wire -----------------------------------------------------------------


def unstuff(payload: bytes) -> bytes:
    assert payload.endswith(b"\r\n.\r\n")
    body = payload[: -len(b".\r\n")]
    return re.sub(rb"(?m)^\.", b"", body)


SMUGGLING = [
    b"Subject: a\n\nline\n.\nMAIL FROM:<evil@x>\n",
    b"Subject: b\r\n\r\nline\r.\rRCPT TO:<evil@x>\r",
    b"Subject: c\r\n\r\nline\r\n.\nDATA\n\r\n",
    b"Subject: d\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nend",
    b"Subject: e\r\n\r\nline\n.\r\nmixed\r\r\n.\r\r\n",
    b".starts with a dot\r\nno final newline",
]


@pytest.mark.parametrize("message", SMUGGLING)
async def test_wire_output_cannot_smuggle(message: bytes, fake_mx, transports) -> None:
    mx = fake_mx()
    t = transports(settings(static_routes=f"*={mx.address}"))
    (result,) = await t.send(envelope("a@example.test"), message)
    assert result.kind == "delivered"
    (session,) = mx.sessions
    (payload,) = session.data_phases()
    # The server read one transaction's commands and nothing smuggled after the body.
    assert session.commands()[:4] == ["EHLO", "MAIL", "RCPT", "DATA"]
    assert [c for c in session.commands() if c in ("MAIL", "RCPT", "DATA")] == [
        "MAIL",
        "RCPT",
        "DATA",
    ]
    # The data phase ended exactly where we meant it to: nothing after the terminator.
    assert payload == wire_data(message)
    # No bare CR or LF anywhere on the wire.
    assert re.search(rb"\r(?!\n)|(?<!\r)\n", payload) is None
    # Un-stuffing gives back the message with normalised line endings.
    expected = re.sub(rb"\r\n|\r|\n", b"\r\n", message)
    if not expected.endswith(b"\r\n"):
        expected += b"\r\n"
    assert unstuff(payload) == expected
    # The only CRLF.CRLF is the terminator.
    assert payload.count(b"\r\n.\r\n") == 1


def test_wire_data_unit() -> None:
    assert wire_data(b"a\n.b\r.\r\n") == b"a\r\n..b\r\n..\r\n.\r\n"
    assert wire_data(b"") == b"\r\n.\r\n"


# --- Postfix's smtp-sink as a target --------------------------------------------------------


async def test_smtp_sink_target(smtp_sink, transports) -> None:
    sink: SmtpSink = smtp_sink(dump=True)
    t = transports(settings(static_routes=f"*={sink.address}"))
    for i in range(5):
        results = await t.send(envelope(f"a{i}@example.test", f"b{i}@example.test"), MESSAGE)
        assert kinds(results) == ["delivered", "delivered"]
    await t.close()
    dumps = await eventually(
        lambda: len(sink.dumped_messages()) >= 5 and sink.dumped_messages(),
        within=5,
        what="five messages in smtp-sink's dump",
    )
    assert len(dumps) == 5
    assert all(b"Subject: hi" in d for d in dumps)


async def test_smtp_sink_rcpt_rejects(smtp_sink, transports) -> None:
    sink: SmtpSink = smtp_sink(extra_args=["-r", "rcpt"])
    t = transports(settings(static_routes=f"*={sink.address}"))
    results = await t.send(envelope("a@example.test"), MESSAGE)
    assert kinds(results) == ["transient"]


async def test_unexpected_error_becomes_transient_result() -> None:
    class BrokenRouter:
        async def route(self, domain: str) -> Any:
            raise RuntimeError("bug")

    s = settings()
    t = Transport(s, make_resolver(DnsSettings(nameservers="127.0.0.1:9")), router=BrokenRouter())  # type: ignore[arg-type]
    (result,) = await t.send(envelope("a@example.test"), MESSAGE)
    assert (result.code, result.enhanced, result.kind) == (451, "4.3.0", "transient")
    await t.close()


async def test_unsafe_recipient_refused_alone(fake_mx, transports) -> None:
    mx = fake_mx()
    t = transports(settings(static_routes=f"*={mx.address}"))
    results = await t.send(
        envelope("ok@example.test", "evil@example.test>\r\nDATA", "x<y@example.test"), MESSAGE
    )
    assert [(r.code, r.enhanced) for r in results] == [
        (250, "2.0.0"),
        (553, "5.1.3"),
        (553, "5.1.3"),
    ]
    (msg,) = await mx.messages_arrived(1)
    assert msg.rcpt_tos == ("ok@example.test",)


async def test_dead_pooled_connection_is_replaced_without_failing(fake_mx, transports) -> None:
    mx = fake_mx(pipelining=False)  # the lock-step path; test_pipelining has the other
    t = transports(settings(static_routes=f"*={mx.address}"))
    assert kinds(await t.send(envelope("a@example.test"), MESSAGE)) == ["delivered"]
    (pooled,) = [c for conns in t._idle.values() for c in conns]

    async def gone(*args: bytes, **kwargs: Any) -> Any:
        # The race where the server's FIN arrives just as MAIL FROM goes out.
        pooled.smtp.close()
        raise aiosmtplib.SMTPServerDisconnected("Connection lost")

    pooled.smtp.execute_command = gone
    assert kinds(await t.send(envelope("b@example.test"), MESSAGE)) == ["delivered"]
    assert t.connections_opened == 2


async def test_cancelled_send_closes_its_connection(fake_mx, transports) -> None:
    mx = fake_mx(silent=True)  # accepts, never greets
    t = transports(settings(static_routes=f"*={mx.address}"))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(t.send(envelope("a@example.test"), MESSAGE), 0.3)
    await eventually(
        lambda: mx.connections == 1 and mx.open_connections == 0,
        within=5,
        what="the cancelled send to close its connection",
    )


async def test_dns_timeout_is_transient(dns_zone) -> None:
    dns_zone.set_timeout("slow.test")
    resolver = make_resolver(DnsSettings(nameservers=dns_zone.nameserver, timeout_s=0.5))
    t = Transport(settings(), resolver)
    try:
        (result,) = await t.send(envelope("a@slow.test"), MESSAGE)
    finally:
        await t.close()
    assert (result.code, result.enhanced, result.kind) == (450, "4.4.3", "transient")
    assert "timeout" in result.text.lower()
