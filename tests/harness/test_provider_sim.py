"""support.provider_sim: the provider model over real SMTP, counting per source IP.

Clients are aiosmtplib bound to two source addresses. Most tests drive the simulator's clock by
hand (the model's timing is proven in test_provider_model.py); one lets a short block run out
on the real clock.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
from support.eventually import eventually
from support.provider_model import PROVIDERS, ProviderLimits, ProviderModel
from support.provider_sim import Accepted, ProviderServer, ProviderSim, ProviderSpec
from support.tls import server_context, trusting_client_context

from mailsluice.delivery.transport.settings import Endpoint, parse_static_routes

A = "127.0.0.21"
B = "127.0.0.22"
MESSAGE = b"Subject: hello\r\n\r\nbody\r\n"

ISP_RATE = "450 4.2.1 rate limit exceeded, slow down"
ISP_CONNECTIONS = "421 4.7.0 too many connections from your IP"
ISP_PER_CONNECTION = "421 4.7.0 too many messages, reconnect"


def isp_block(ip: str) -> str:
    return (
        f"421 4.7.0 Your IP {ip} is temporarily blocked after repeated deferrals; try again later"
    )


class Clock:
    """The simulator's clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


BASE = ProviderLimits(
    rate_per_min=60.0, burst=100, connections=10, per_connection=100, penalty_deferrals=100
)


def limits(**overrides: Any) -> ProviderLimits:
    """Generous limits but for the one a test is about; no penalty unless asked."""
    return replace(BASE, **overrides)


@contextmanager
def simulator(*specs: ProviderSpec, clock: Clock | None = None) -> Iterator[ProviderSim]:
    sim = ProviderSim(specs, clock=clock) if clock is not None else ProviderSim(specs)
    with sim:
        yield sim


@asynccontextmanager
async def client(server: ProviderServer, source: str) -> AsyncIterator[aiosmtplib.SMTP]:
    smtp = aiosmtplib.SMTP(
        hostname=server.host,
        port=server.port,
        source_address=(source, 0),
        start_tls=False,
        timeout=10,
    )
    await smtp.connect()
    try:
        yield smtp
    finally:
        if smtp.is_connected:
            await smtp.quit()


async def send(smtp: aiosmtplib.SMTP, recipient: str) -> str:
    """One message; the reply that decided it ("250" when accepted)."""
    try:
        await smtp.sendmail("sender@source.test", [recipient], MESSAGE)
    except aiosmtplib.SMTPRecipientsRefused as refused:
        (error,) = refused.recipients
        return f"{error.code} {error.message}"
    except aiosmtplib.SMTPResponseException as error:
        return f"{error.code} {error.message}"
    return "250"


async def refused_greeting(server: ProviderServer, source: str) -> str:
    with pytest.raises(aiosmtplib.SMTPConnectResponseError) as info:
        async with client(server, source):
            pass
    return f"{info.value.code} {info.value.message}"


async def closed_by_server(server: ProviderServer, source: str) -> None:
    await eventually(
        lambda: server.open_from(source) == 0, within=5, what=f"{source}'s connections closed"
    )


@pytest.mark.parametrize("defer_at", ["rcpt", "data"])
async def test_each_source_ip_has_its_own_bucket(defer_at: str) -> None:
    clock = Clock()
    spec = ProviderSpec("isp", limits(burst=2, defer_at=defer_at))
    with simulator(spec, clock=clock) as sim:
        isp = sim.server("isp")
        async with client(isp, A) as a, client(isp, B) as b:
            assert [await send(a, f"a{i}@isp.test") for i in range(3)] == ["250", "250", ISP_RATE]
            assert [await send(b, f"b{i}@isp.test") for i in range(2)] == ["250", "250"]
            clock.now += 1.0  # one token each
            assert await send(a, "a3@isp.test") == "250"
            assert await send(a, "a4@isp.test") == ISP_RATE
        assert [(r.source, r.recipient) for r in sim.accepted] == [
            (A, "a0@isp.test"),
            (A, "a1@isp.test"),
            (B, "b0@isp.test"),
            (B, "b1@isp.test"),
            (A, "a3@isp.test"),
        ]
        assert [(r.source, r.phase, r.kind, r.reply.line) for r in sim.refusals] == [
            (A, defer_at, "rate", ISP_RATE),
            (A, defer_at, "rate", ISP_RATE),
        ]
        assert (isp.stats(A).accepted, isp.stats(A).deferred) == (3, 2)
        assert (isp.stats(B).accepted, isp.stats(B).deferred) == (2, 0)


async def test_the_greeting_is_refused_past_the_connection_cap_per_source() -> None:
    with simulator(ProviderSpec("isp", limits(connections=2)), clock=Clock()) as sim:
        isp = sim.server("isp")
        async with client(isp, A), client(isp, A) as second:
            assert await refused_greeting(isp, A) == ISP_CONNECTIONS
            async with client(isp, B) as b:  # the other address still gets in
                assert await send(b, "b@isp.test") == "250"
            await second.quit()
            await eventually(lambda: isp.open_from(A) == 1, within=5, what="one closed")
            async with client(isp, A) as again:
                assert await send(again, "a@isp.test") == "250"
        assert [(r.source, r.phase, r.kind) for r in sim.refusals] == [
            (A, "connect", "connections")
        ]
        assert isp.stats(A).max_concurrent == 2
        assert isp.stats(A).refused_connections == 1
        assert isp.connections == 4  # the refused one never reached SMTP


async def test_mail_is_refused_past_the_per_connection_cap_and_the_server_closes() -> None:
    with simulator(ProviderSpec("isp", limits(per_connection=2)), clock=Clock()) as sim:
        isp = sim.server("isp")
        async with client(isp, A) as a:
            assert [await send(a, f"a{i}@isp.test") for i in range(3)] == [
                "250",
                "250",
                ISP_PER_CONNECTION,
            ]
            await closed_by_server(isp, A)
        async with client(isp, A) as a:  # reconnect at once: a fresh allowance
            assert await send(a, "a3@isp.test") == "250"
        assert [(r.phase, r.kind) for r in sim.refusals] == [("mail", "per_connection")]
        assert len(sim.accepted) == 3


async def test_a_source_ignoring_deferrals_is_blocked_at_connect_and_mail_until_it_ends() -> None:
    clock = Clock()
    spec = ProviderSpec(
        "isp", limits(burst=1, rate_per_min=0.6, penalty_deferrals=2, block_s=300.0)
    )
    with simulator(spec, clock=clock) as sim:
        isp = sim.server("isp")
        async with client(isp, A) as a, client(isp, B) as b:
            replies = [await send(a, f"a{i}@isp.test") for i in range(5)]
            assert replies == ["250", ISP_RATE, ISP_RATE, ISP_RATE, isp_block(A)]
            await closed_by_server(isp, A)  # the block reply at MAIL is a 421
            assert await send(b, "b@isp.test") == "250"  # the other address is not blocked
        assert await refused_greeting(isp, A) == isp_block(A)
        clock.now += 300.0
        async with client(isp, A) as a:
            assert await send(a, "a5@isp.test") == "250"
        kinds = [(r.phase, r.kind) for r in sim.refusals if r.source == A]
        assert kinds == [("rcpt", "rate")] * 3 + [("mail", "block"), ("connect", "block")]
        assert isp.stats(A).blocks == 1
        assert isp.stats(B).blocks == 0


async def test_a_short_block_ends_on_the_real_clock() -> None:
    spec = ProviderSpec("isp", limits(burst=1, rate_per_min=0.6, penalty_deferrals=0, block_s=0.3))
    with simulator(spec) as sim:
        isp = sim.server("isp")
        async with client(isp, A) as a:
            assert [await send(a, "a@isp.test") for _ in range(2)] == ["250", ISP_RATE]
        assert await refused_greeting(isp, A) == isp_block(A)
        # The block is what is under test here: wait until the model says it is over.
        await eventually(lambda: not isp.blocked(A), within=5, what="the block to end")
        async with client(isp, A) as a:
            assert await send(a, "a@isp.test") == ISP_RATE  # no token yet, but connected


async def test_texts_name_the_source_and_a_421_closes_the_connection() -> None:
    google = ProviderSpec("google", limits(burst=1), texts=PROVIDERS["google"][1])
    microsoft = ProviderSpec("microsoft", limits(burst=1))
    with simulator(google, microsoft, clock=Clock()) as sim:
        async with client(sim.server("microsoft"), B) as m:
            assert await send(m, "x@outlook.test") == "250"
            ms_text = f"Server busy. Please try again later from [{B}]. (AS761)"
            assert await send(m, "y@outlook.test") == f"451 4.7.500 {ms_text}"
            assert m.is_connected  # a 451 keeps the connection
        async with client(sim.server("google"), A) as g:
            assert await send(g, "x@gmail.test") == "250"
            reply = await send(g, "y@gmail.test")
            assert reply.startswith(f"421 4.7.28 [{A}] Our system has detected an unusual rate")
            await closed_by_server(sim.server("google"), A)
        assert [(r.provider, r.phase, r.kind, r.reply.line) for r in sim.refusals] == [
            ("microsoft", "rcpt", "rate", f"451 4.7.500 {ms_text}"),
            ("google", "rcpt", "rate", reply),
        ]


async def test_accepted_messages_are_recorded_with_time_source_provider_and_recipient() -> None:
    clock = Clock()
    with simulator(ProviderSpec("yahoo", limits()), clock=clock) as sim:
        yahoo = sim.server("yahoo")
        async with client(yahoo, A) as a, client(yahoo, B) as b:
            await a.sendmail("s@source.test", ["one@yahoo.test", "two@yahoo.test"], MESSAGE)
            clock.now += 2.5
            assert await send(b, "three@yahoo.test") == "250"
        assert await sim.accepted_arrived(3) == [
            Accepted(1000.0, A, "yahoo", "one@yahoo.test"),
            Accepted(1000.0, A, "yahoo", "two@yahoo.test"),
            Accepted(1002.5, B, "yahoo", "three@yahoo.test"),
        ]
        assert sim.refusals == []


async def test_starttls_is_offered_when_asked_and_mail_goes_through_it(tmp_path: Path) -> None:
    spec = ProviderSpec("isp", limits(), tls_context=server_context(tmp_path, "mx.isp.test"))
    with simulator(spec, clock=Clock()) as sim:
        isp = sim.server("isp")
        smtp = aiosmtplib.SMTP(
            hostname=isp.host,
            port=isp.port,
            source_address=(A, 0),
            start_tls=True,
            tls_context=trusting_client_context(),
            timeout=10,
        )
        async with smtp:
            assert smtp.get_transport_info("sslcontext") is not None
            assert await send(smtp, "a@isp.test") == "250"
        assert [a.source for a in sim.accepted] == [A]


async def test_latency_delays_the_reply_to_the_end_of_data() -> None:
    with simulator(ProviderSpec("isp", limits(), latency_s=0.2)) as sim:
        async with client(sim.server("isp"), A) as a:
            started = time.monotonic()
            assert await send(a, "a@isp.test") == "250"
            assert time.monotonic() - started >= 0.2


async def test_summary_gives_the_bench_its_table() -> None:
    clock = Clock()
    spec = ProviderSpec("isp", limits(rate_per_min=60.0, burst=2))
    with simulator(spec, ProviderSpec("google", limits()), clock=clock) as sim:
        async with client(sim.server("isp"), A) as a:
            sent = [await send(a, f"a{i}@isp.test") for i in range(3)]
            clock.now += 1.0
            sent += [await send(a, "a3@isp.test")]
            clock.now += 1.0
            sent += [await send(a, "a4@isp.test")]
        assert sent == ["250", "250", ISP_RATE, "250", "250"]
        isp, google, overall = sim.summary()
        assert (isp.provider, isp.delivered, isp.span_s, isp.ideal_s) == ("isp", 4, 2.0, 2.0)
        assert (isp.attempts, isp.deferred, isp.blocks, isp.refusals) == (5, 1, 0, 0)
        assert isp.efficiency == 1.0
        assert isp.deferral_pct == pytest.approx(20.0)
        assert (google.delivered, google.efficiency, google.deferral_pct) == (0, 1.0, 0.0)
        assert (overall.provider, overall.delivered, overall.ideal_s) == ("overall", 4, 2.0)
        assert sim.summary(sources=2)[0].ideal_s == 0.0  # two buckets hold it all at once


def test_two_providers_cannot_share_a_name() -> None:
    with pytest.raises(ValueError, match="two providers named 'isp'"):
        ProviderSim([ProviderSpec("isp", limits()), ProviderSpec("isp", limits())])


def test_each_provider_has_its_own_address_the_routes_name() -> None:
    sim = ProviderSim(
        [ProviderSpec("isp-a", limits(), kind="isp"), ProviderSpec("google", limits())]
    )
    isp, google = sim.server("isp-a"), sim.server("google")
    assert isinstance(isp.model, ProviderModel)
    assert (isp.texts, google.texts) == (PROVIDERS["isp"][0], PROVIDERS["google"][0])
    assert isp.host != google.host
    routes = parse_static_routes(sim.routes({"gmail.com": "google", "isp.test": "isp-a"}))
    assert routes == {
        "gmail.com": Endpoint(google.host, google.port),
        "isp.test": Endpoint(isp.host, isp.port),
    }
