"""STARTTLS: opportunistic upgrade, required policy, a broken handshake, and old HELO servers."""

from __future__ import annotations

import ssl

import pytest
from support.tls import server_context
from support.transport import envelope, settings

MESSAGE = b"Subject: tls\r\n\r\nbody\r\n"


@pytest.fixture(scope="module")
def server_tls(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    return server_context(tmp_path_factory.mktemp("tls"), "mx.tls.test")


@pytest.fixture
def tls_mx(fake_mx, server_tls: ssl.SSLContext):
    return fake_mx(tls_context=server_tls)


async def test_opportunistic_upgrades_when_offered(tls_mx, transports) -> None:
    t = transports(settings(static_routes=f"*={tls_mx.address}"))
    for _ in range(2):  # the second rides the pooled, already encrypted connection
        (result,) = await t.send(envelope("a@example.test"), MESSAGE)
        assert result.kind == "delivered", result
    assert [m.tls for m in await tls_mx.messages_arrived(2)] == [True, True]
    assert t.connections_opened == 1


async def test_required_policy_with_tls_delivers(tls_mx, transports) -> None:
    t = transports(settings(static_routes=f"*={tls_mx.address}", tls_policy="required"))
    (result,) = await t.send(envelope("a@example.test"), MESSAGE)
    assert result.kind == "delivered"
    assert [m.tls for m in await tls_mx.messages_arrived(1)] == [True]


async def test_policy_none_stays_plaintext(tls_mx, transports) -> None:
    t = transports(settings(static_routes=f"*={tls_mx.address}", tls_policy="none"))
    (result,) = await t.send(envelope("a@example.test"), MESSAGE)
    assert result.kind == "delivered"
    assert [m.tls for m in await tls_mx.messages_arrived(1)] == [False]
    assert "STARTTLS" not in tls_mx.sessions[0].commands()


async def test_verify_rejects_self_signed_when_required(tls_mx, transports) -> None:
    s = settings(static_routes=f"*={tls_mx.address}", tls_policy="required", tls_verify=True)
    (result,) = await transports(s).send(envelope("a@example.test"), MESSAGE)
    assert (result.code, result.enhanced, result.kind) == (451, "4.7.5", "transient")
    assert tls_mx.messages == [] and tls_mx.transactions == 0


async def test_broken_tls_falls_back_to_plaintext_when_opportunistic(fake_mx, transports) -> None:
    mx = fake_mx(broken_tls=True)
    t = transports(settings(static_routes=f"*={mx.address}"))
    (result,) = await t.send(envelope("a@example.test"), MESSAGE)
    assert result.kind == "delivered", result
    first, second = mx.sessions
    assert first.commands()[:2] == ["EHLO", "STARTTLS"]
    assert "STARTTLS" not in second.commands() and "DATA" in second.commands()
    assert [m.tls for m in await mx.messages_arrived(1)] == [False]


async def test_broken_tls_defers_when_required(fake_mx, transports) -> None:
    mx = fake_mx(broken_tls=True)
    t = transports(settings(static_routes=f"*={mx.address}", tls_policy="required"))
    (result,) = await t.send(envelope("a@example.test"), MESSAGE)
    assert (result.code, result.enhanced, result.kind) == (451, "4.7.5", "transient")
    assert mx.connections == 1
    assert mx.transactions == 0


async def test_helo_only_server(fake_mx, transports) -> None:
    mx = fake_mx(ehlo=False)
    t = transports(settings(static_routes=f"*={mx.address}"))
    (result,) = await t.send(envelope("a@example.test"), MESSAGE)
    assert result.kind == "delivered", result
    assert mx.sessions[0].commands()[:3] == ["EHLO", "HELO", "MAIL"]
