"""Several source addresses per pool, and what each result tells shaping: a send goes out from
the address it names (the MX sees that peer), connections are pooled per source and never
cross, and every result says where its reply came from (phase), how many messages its
connection had carried, and from which source it went."""

from __future__ import annotations

from typing import Any

import pytest
from support.fake_mx import R421_GREETING, free_port
from support.transport import envelope, settings

from mailsluice.delivery.shaping.limiter import Rate
from mailsluice.delivery.transport.client import RecipientResult
from mailsluice.delivery.transport.limits import TransportLimits

MESSAGE = b"From: a@sender.test\r\nSubject: sources\r\n\r\nHello.\r\n"
SOURCES = ("127.0.0.21", "127.0.0.22")
PER_CONNECTION = "421 4.7.0 too many messages, reconnect"


def two_sources(mx_address: str, **kw: Any) -> Any:
    return settings(static_routes=f"*={mx_address}", source_addresses=SOURCES, **kw)


def facts(result: RecipientResult) -> tuple[int, str, str, int, str]:
    return result.code, result.enhanced, result.phase, result.sent_on_connection, result.source


async def test_each_send_goes_out_from_its_source(fake_mx, transports) -> None:
    mx = fake_mx()
    t = transports(two_sources(mx.address))
    (a,) = await t.send(envelope("a@example.test"), MESSAGE, source="127.0.0.21")
    (b,) = await t.send(envelope("b@example.test"), MESSAGE, source="127.0.0.22")
    (c,) = await t.send(envelope("c@example.test"), MESSAGE)  # "": the first configured
    assert [r.kind for r in (a, b, c)] == ["delivered"] * 3
    assert [r.source for r in (a, b, c)] == ["127.0.0.21", "127.0.0.22", "127.0.0.21"]
    messages = await mx.messages_arrived(3)
    assert [m.peer[0] for m in messages] == ["127.0.0.21", "127.0.0.22", "127.0.0.21"]
    # Two connections: the third send took the idle one of its own source, not 127.0.0.22's.
    assert [s.peer[0] for s in mx.sessions] == ["127.0.0.21", "127.0.0.22"]
    assert sorted(key[2] for key in t._idle) == ["127.0.0.21", "127.0.0.22"]


async def test_an_idle_connection_of_another_source_is_never_taken(fake_mx, transports) -> None:
    mx = fake_mx()
    t = transports(two_sources(mx.address))
    for i in range(3):
        (r,) = await t.send(envelope(f"a{i}@example.test"), MESSAGE, source="127.0.0.22")
        assert r.kind == "delivered" and r.sent_on_connection == i
    (first,) = await t.send(envelope("b@example.test"), MESSAGE, source="127.0.0.21")
    assert (first.kind, first.sent_on_connection) == ("delivered", 0)  # a new connection
    assert [s.peer[0] for s in mx.sessions] == ["127.0.0.22", "127.0.0.21"]
    assert [len(s.data_phases()) for s in mx.sessions] == [3, 1]


async def test_an_unconfigured_source_sends_nothing(fake_mx, transports) -> None:
    mx = fake_mx()
    t = transports(two_sources(mx.address))
    (r,) = await t.send(envelope("a@example.test"), MESSAGE, source="127.0.0.23")
    assert (r.code, r.enhanced, r.kind, r.source) == (451, "4.3.0", "transient", "127.0.0.23")
    assert "not configured" in r.text
    assert mx.connections == 0
    none = transports(settings(static_routes=f"*={mx.address}"))
    (r,) = await none.send(envelope("a@example.test"), MESSAGE, source="127.0.0.21")
    assert r.code == 451 and mx.connections == 0  # none configured: only "" (any) is allowed
    (r,) = await none.send(envelope("a@example.test"), MESSAGE)
    assert (r.kind, r.source) == ("delivered", "")


async def test_each_source_has_its_own_connection_rate(fake_mx, transports) -> None:
    mx = fake_mx()
    one_a_minute = TransportLimits(messages_per_connection=1, connection_rate=Rate(1, 60, 1))
    t = transports(two_sources(mx.address), limits=lambda _k: one_a_minute, connect_wait_max_s=0.1)
    sent = [
        await t.send(envelope(f"r{i}@example.test"), MESSAGE, source=source)
        for i, source in enumerate((*SOURCES, *SOURCES))
    ]
    assert [facts(r) for (r,) in sent] == [
        (250, "2.0.0", "data", 0, "127.0.0.21"),
        (250, "2.0.0", "data", 0, "127.0.0.22"),
        (451, "4.4.5", "", 0, "127.0.0.21"),  # our own limit: no remote said anything
        (451, "4.4.5", "", 0, "127.0.0.22"),
    ]


# --- phase and messages on the connection --------------------------------------------------------


async def test_a_cap_at_mail_names_the_phase_and_the_count(fake_mx, transports) -> None:
    mx = fake_mx()
    t = transports(two_sources(mx.address))
    for i in range(2):
        (r,) = await t.send(envelope(f"r{i}@example.test"), MESSAGE, source="127.0.0.22")
        assert facts(r) == (250, "2.0.0", "data", i, "127.0.0.22")
    mx.script.mail_reply = PER_CONNECTION  # the third message of the connection is refused
    (capped,) = await t.send(envelope("r2@example.test"), MESSAGE, source="127.0.0.22")
    assert facts(capped) == (421, "4.7.0", "mail", 2, "127.0.0.22")
    assert capped.text == "too many messages, reconnect"
    mx.script.mail_reply = None
    (again,) = await t.send(envelope("r3@example.test"), MESSAGE, source="127.0.0.22")
    assert facts(again) == (250, "2.0.0", "data", 0, "127.0.0.22")  # after a 421: a new one
    assert mx.connections == 2


async def test_a_refused_greeting_is_the_greeting_phase(fake_mx, transports) -> None:
    mx = fake_mx(greeting=R421_GREETING)
    t = transports(two_sources(mx.address))
    results = await t.send(envelope("a@example.test", "b@example.test"), MESSAGE)
    assert [facts(r) for r in results] == [(421, "4.3.2", "greeting", 0, "127.0.0.21")] * 2
    assert results[0].text == "Service not available, closing transmission channel"


async def test_a_refused_connection_is_the_connect_phase(transports) -> None:
    t = transports(two_sources(f"127.0.0.1:{free_port('127.0.0.1')}"))  # nothing listens
    (r,) = await t.send(envelope("a@example.test"), MESSAGE, source="127.0.0.22")
    assert facts(r) == (451, "4.4.1", "connect", 0, "127.0.0.22")


@pytest.mark.parametrize(
    ("script", "rcpt", "expected"),
    [
        ({"drop_at": "ehlo"}, "a", (451, "4.4.2", "ehlo")),
        ({"mail_reply": "452 4.3.1 Insufficient system storage"}, "a", (452, "4.3.1", "mail")),
        ({"drop_at": "mail"}, "a", (451, "4.4.2", "mail")),
        ({}, "tempfail", (450, "4.2.0", "rcpt")),
        ({}, "rcpt-550", (550, "5.1.1", "rcpt")),
        ({"drop_at": "rcpt"}, "a", (451, "4.4.2", "rcpt")),
        ({"data_reply": "451 4.7.500 Server busy"}, "a", (451, "4.7.500", "data")),
        ({"drop_at": "dot"}, "a", (451, "4.4.2", "data")),
        ({}, "a", (250, "2.0.0", "data")),
    ],
)
async def test_the_phase_of_each_reply(
    fake_mx, transports, script: dict[str, Any], rcpt: str, expected: tuple[int, str, str]
) -> None:
    mx = fake_mx(**script)
    t = transports(two_sources(mx.address))
    (r,) = await t.send(envelope(f"{rcpt}@example.test"), MESSAGE)
    assert (r.code, r.enhanced, r.phase) == expected, r
    assert (r.sent_on_connection, r.source) == (0, "127.0.0.21")


async def test_recipients_refused_locally_have_no_phase(fake_mx, transports) -> None:
    mx = fake_mx()
    t = transports(two_sources(mx.address))
    ok, bad = await t.send(envelope("a@example.test", "b c@example.test"), MESSAGE)
    assert (ok.code, ok.phase) == (250, "data")
    assert (bad.code, bad.enhanced, bad.phase, bad.source) == (553, "5.1.3", "", "127.0.0.21")
