"""The SMTP transport keeps each destination's connection-level shaping limits — messages per
connection, recipients per transaction, TLS required, connections per minute — against fake MX
servers on 127.0.0.x; routing teaches the shaper a hosted domain's MX hosts, and the
connections-open gauge counts connections by pool and provider."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import REGISTRY
from support.dns_server import DnsServer
from support.fake_mx import FakeMx, free_port, next_loopback
from support.transport import envelope, settings

from mailsluice.delivery.service import make_transport
from mailsluice.delivery.shaping.engine import PolicyShaper
from mailsluice.delivery.shaping.limiter import Rate
from mailsluice.delivery.transport.client import RecipientResult, shaper_limits
from mailsluice.delivery.transport.limits import (
    ConnectGates,
    TransportLimits,
    batches,
    effective_tls,
    limits_from_shaping,
)
from mailsluice.delivery.transport.settings import OutboundSettings
from mailsluice.policy.shaping import default_policy, load_policy_text
from mailsluice.resolver import DnsSettings

MESSAGE = b"From: a@sender.test\r\nSubject: shaping\r\n\r\nHello.\r\n"
OPEN = "mailsluice_delivery_connections_open"
POLICY = """
version = 1
[defaults]
connection_limit = 10
max_message_rate = "100/s"
max_connection_rate = "60/min,burst=8"
max_deliveries_per_connection = 2
max_recipients_per_transaction = 2
tls = "opportunistic"
[provider.big]
mx_suffixes = ["big.example"]
shards = 4
tls = "required"
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fixed(**kw: Any) -> Callable[[str], TransportLimits]:
    limits = TransportLimits(**kw)
    return lambda _key: limits


def gauge(pool: str, provider: str) -> float:
    return REGISTRY.get_sample_value(OPEN, {"pool": pool, "provider": provider}) or 0.0


def summary(results: list[RecipientResult]) -> list[tuple[str, int, str]]:
    return [(r.recipient, r.code, r.enhanced) for r in results]


# --- messages per connection and recipients per transaction -------------------------------------


async def test_messages_per_connection_closes_after_n(fake_mx, transports) -> None:
    mx = fake_mx()
    t = transports(
        settings(static_routes=f"*={mx.address}"), limits=fixed(messages_per_connection=3)
    )
    for i in range(10):
        (result,) = await t.send(envelope(f"r{i}@example.test"), MESSAGE)
        assert result.kind == "delivered", result
    assert len(await mx.messages_arrived(10)) == 10
    assert mx.connections == 4 and t.connections_opened == 4  # 3 + 3 + 3 + 1


async def test_without_limits_the_settings_alone_apply(fake_mx, transports) -> None:
    mx = fake_mx()
    t = transports(settings(static_routes=f"*={mx.address}"))
    for i in range(10):
        (result,) = await t.send(envelope(f"r{i}@example.test"), MESSAGE)
        assert result.kind == "delivered"
    assert mx.connections == 1


async def test_recipients_per_transaction_splits_the_message(fake_mx, transports) -> None:
    mx = fake_mx()
    t = transports(
        settings(static_routes=f"*={mx.address}"), limits=fixed(recipients_per_transaction=3)
    )
    rcpts = [f"r{i}@example.test" for i in range(7)]
    rcpts[1] = "tempfail+1@example.test"
    rcpts[5] = "permfail+5@example.test"
    results = await t.send(envelope(*rcpts), MESSAGE)
    assert [r.recipient for r in results] == rcpts  # one result each, in order
    assert [r.kind for r in results] == [
        "delivered",
        "transient",
        *["delivered"] * 3,
        "permanent",
        "delivered",
    ]
    assert mx.transactions == 3
    got = await mx.messages_arrived(3)
    assert [m.rcpt_tos for m in got] == [
        (rcpts[0], rcpts[2]),
        (rcpts[3], rcpts[4]),
        (rcpts[6],),
    ]
    assert mx.connections == 1  # the batches share the connection


async def test_batches_count_against_messages_per_connection(fake_mx, transports) -> None:
    mx = fake_mx()
    limits = fixed(recipients_per_transaction=2, messages_per_connection=1)
    t = transports(settings(static_routes=f"*={mx.address}"), limits=limits)
    results = await t.send(envelope(*(f"r{i}@example.test" for i in range(5))), MESSAGE)
    assert [r.kind for r in results] == ["delivered"] * 5
    assert mx.transactions == 3 and mx.connections == 3


async def test_unreachable_destination_is_not_retried_per_batch(fake_mx, transports) -> None:
    mx = fake_mx(greeting="421 4.3.2 Service not available")
    t = transports(
        settings(static_routes=f"*={mx.address}"), limits=fixed(recipients_per_transaction=1)
    )
    results = await t.send(envelope("a@example.test", "b@example.test", "c@example.test"), MESSAGE)
    assert [(r.code, r.enhanced) for r in results] == [(421, "4.3.2")] * 3
    assert mx.connections == 1  # the first batch reached no server; the others follow it


# --- TLS --------------------------------------------------------------------------------------


def mx_route(dns: DnsServer, domain: str, mx: FakeMx, name: str | None = None) -> str:
    host = name or f"mx.{domain}"
    dns.set_mx(domain, [(10, host)])
    dns.set_a(host, [mx.host])
    return host


async def test_tls_required_without_starttls_defers_and_sends_nothing(
    fake_mx, dns_zone, transports
) -> None:
    mx = fake_mx(host=next_loopback(), port=free_port())  # aiosmtpd without TLS: no STARTTLS
    mx_route(dns_zone, "strict.test", mx)
    s = settings(port=mx.port, allow_private_destinations=True, tls_policy="opportunistic")
    t = transports(s, dns_zone, limits=fixed(tls="required"))
    results = await t.send(envelope("a@strict.test", "b@strict.test"), MESSAGE)
    assert summary(results) == [("a@strict.test", 451, "4.7.4"), ("b@strict.test", 451, "4.7.4")]
    assert all(r.kind == "transient" for r in results)
    assert "TLS is required" in results[0].text
    assert mx.connections == 1  # no plaintext retry
    assert mx.transactions == 0 and mx.messages == []


async def test_tls_required_never_reuses_a_plaintext_connection(
    fake_mx, dns_zone, transports
) -> None:
    mx = fake_mx(host=next_loopback(), port=free_port())
    mx_route(dns_zone, "lax.test", mx, "mx.shared.test")
    mx_route(dns_zone, "strict.test", mx, "mx.shared.test")
    policy = {"lax.test": TransportLimits(), "strict.test": TransportLimits(tls="required")}
    s = settings(port=mx.port, allow_private_destinations=True)
    t = transports(s, dns_zone, limits=policy.__getitem__)
    (lax,) = await t.send(envelope("a@lax.test"), MESSAGE)
    assert lax.kind == "delivered"  # its plaintext connection now waits in the pool
    (strict,) = await t.send(envelope("a@strict.test"), MESSAGE)
    assert (strict.code, strict.enhanced) == (451, "4.7.4")
    assert mx.transactions == 1 and mx.connections == 2
    (again,) = await t.send(envelope("b@lax.test"), MESSAGE)
    assert again.kind == "delivered" and mx.connections == 2  # the idle one is still there


def relay_settings(route: str, mx: FakeMx, **kw: Any) -> OutboundSettings:
    """Mail for every domain through `mx`, by a static route or as the smarthost."""
    if route == "static":
        return settings(static_routes=f"*={mx.address}", **kw)
    return settings(smarthost=mx.address, **kw)


@pytest.mark.parametrize("route", ["static", "smarthost"])
async def test_tls_required_by_the_key_holds_through_a_relay(
    fake_mx, transports, route: str
) -> None:
    mx = fake_mx()  # aiosmtpd without TLS: no STARTTLS
    s = relay_settings(route, mx, tls_policy="none")
    t = transports(s, limits=fixed(tls="required"))
    results = await t.send(envelope("a@example.test", "b@example.test"), MESSAGE)
    assert summary(results) == [
        ("a@example.test", 451, "4.7.4"),
        ("b@example.test", 451, "4.7.4"),
    ]
    assert {r.phase for r in results} == {"tls"}
    assert mx.connections == 1 and mx.transactions == 0  # no plaintext retry


@pytest.mark.parametrize("route", ["static", "smarthost"])
async def test_googles_tls_rule_holds_through_a_relay(fake_mx, transports, route: str) -> None:
    mx = fake_mx()
    shaper = PolicyShaper(default_policy(), "shape")
    t = transports(relay_settings(route, mx), limits=shaper_limits(shaper))
    (google,) = await t.send(envelope("a@gmail.com", key="google"), MESSAGE)
    assert (google.code, google.enhanced) == (451, "4.7.4")
    (plain,) = await t.send(envelope("a@plain.test"), MESSAGE)
    assert plain.kind == "delivered"  # the relay itself is fine for keys without the rule
    assert mx.transactions == 1


@pytest.mark.parametrize("route", ["static", "smarthost"])
async def test_the_keys_other_limits_apply_through_a_relay(fake_mx, transports, route: str) -> None:
    mx = fake_mx()
    policy = load_policy_text(POLICY)
    shaper = PolicyShaper(policy, "shape")
    limits = shaper_limits(shaper)
    t = transports(relay_settings(route, mx), limits=limits, clock=Clock(), connect_wait_max_s=0.1)
    results = await t.send(envelope(*(f"r{i}@relayed.test" for i in range(5))), MESSAGE)
    assert [r.kind for r in results] == ["delivered"] * 5
    # 2 recipients per transaction, 2 messages per connection: 3 transactions, 2 connections.
    assert mx.transactions == 3 and mx.connections == 2
    assert [len(m.rcpt_tos) for m in await mx.messages_arrived(3)] == [2, 2, 1]
    # The policy's 60/min with a burst of 8, one message per connection: 8 sends, then none.
    one_each = dataclasses.replace(limits("relayed.test"), messages_per_connection=1)
    assert one_each.connection_rate == Rate(60, 60, 8)
    t = transports(
        relay_settings(route, mx), limits=lambda _k: one_each, clock=Clock(), connect_wait_max_s=0.1
    )
    sent = [await t.send(envelope(f"x{i}@relayed.test"), MESSAGE) for i in range(9)]
    assert [r.enhanced for (r,) in sent] == ["2.0.0"] * 8 + ["4.4.5"]


def test_effective_tls_the_stricter_wins() -> None:
    assert effective_tls("opportunistic", "required") == "required"
    assert effective_tls("none", "required") == "required"
    assert effective_tls("required", "disabled") == "required"  # the setting is stricter
    assert effective_tls("required", "opportunistic") == "required"
    assert effective_tls("required", None) == "required"
    assert effective_tls("opportunistic", "disabled") == "none"
    assert effective_tls("none", "opportunistic") == "none"  # the default rule adds nothing
    assert effective_tls("opportunistic", "opportunistic") == "opportunistic"
    assert effective_tls("opportunistic", None) == "opportunistic"


# --- connections per minute --------------------------------------------------------------------


async def test_connection_rate_is_never_exceeded(fake_mx, transports) -> None:
    mx = fake_mx()
    clock = Clock()
    limits = fixed(messages_per_connection=1, connection_rate=Rate(2, 60, burst=2))
    t = transports(
        settings(static_routes=f"*={mx.address}"),
        limits=limits,
        clock=clock,
        connect_wait_max_s=0.2,
    )
    first = [await t.send(envelope(f"r{i}@example.test"), MESSAGE) for i in range(2)]
    assert [r.kind for (r,) in first] == ["delivered", "delivered"]
    started = time.monotonic()
    (over,) = await t.send(envelope("r3@example.test"), MESSAGE)
    assert time.monotonic() - started >= 0.19  # it waited briefly for a token
    assert (over.code, over.enhanced, over.kind) == (451, "4.4.5", "transient")
    assert mx.connections == 2 and len(mx.messages) == 2
    clock.now += 29.0  # one token every 30 s
    (still,) = await t.send(envelope("r4@example.test"), MESSAGE)
    assert (still.code, still.enhanced) == (451, "4.4.5")
    clock.now += 1.0
    (later,) = await t.send(envelope("r5@example.test"), MESSAGE)
    assert later.kind == "delivered" and mx.connections == 3


async def test_connection_rate_is_per_routing_key(fake_mx, transports) -> None:
    mx = fake_mx()
    limits = fixed(messages_per_connection=1, connection_rate=Rate(1, 60, burst=1))
    t = transports(
        settings(static_routes=f"*={mx.address}"),
        limits=limits,
        clock=Clock(),
        connect_wait_max_s=0.1,
    )
    results = [await t.send(envelope(f"a@d{i}.test"), MESSAGE) for i in range(3)]
    assert [r.kind for (r,) in results] == ["delivered"] * 3
    (over,) = await t.send(envelope("b@d0.test"), MESSAGE)
    assert over.enhanced == "4.4.5"


async def test_over_the_rate_a_send_waits_for_an_idle_connection(fake_mx, transports) -> None:
    mx = fake_mx(delay=0.05)
    limits = fixed(connection_rate=Rate(1, 60, burst=1))
    t = transports(
        settings(static_routes=f"*={mx.address}"),
        limits=limits,
        clock=Clock(),
        connect_wait_max_s=5.0,
    )
    sends = [t.send(envelope(f"r{i}@example.test"), MESSAGE) for i in range(3)]
    results = await asyncio.gather(*sends)
    assert [r.kind for (r,) in results] == ["delivered"] * 3
    assert mx.connections == 1  # the others took the connection when it came back


def test_gates_keep_their_state_when_the_rate_changes() -> None:
    gates = ConnectGates(max_keys=2)
    gate = gates.get("a.test", Rate(1, 60), 0.0)
    assert gate is not None and gate.try_acquire(0.0) and not gate.try_acquire(1.0)
    same = gates.get("a.test", Rate(2, 60), 1.0)
    assert same is gate and not gate.try_acquire(1.0)  # no fresh burst from a change
    assert gates.get("a.test", None, 1.0) is None and len(gates) == 0
    for key in ("b.test", "c.test", "d.test"):
        gates.get(key, Rate(1, 60), 0.0)
    assert len(gates) <= 2


# --- the shaping engine: limits from the policy, MX rollup --------------------------------------


async def test_hosted_domain_rolls_up_by_mx_before_its_limits(
    fake_mx, dns_zone, transports
) -> None:
    mx = fake_mx(host=next_loopback(), port=free_port())
    mx_route(dns_zone, "hosted.test", mx, "mta5.am0.yahoodns.net")
    shaper = PolicyShaper(default_policy(), "shape")
    heard: list[tuple[str, tuple[str, ...]]] = []

    def on_mx(key: str, hosts: tuple[str, ...]) -> None:
        heard.append((key, hosts))
        shaper.learn_mx(key, hosts)

    s = settings(port=mx.port, allow_private_destinations=True)
    t = transports(s, dns_zone, limits=shaper_limits(shaper), on_mx=on_mx)
    for i in range(21):
        (result,) = await t.send(envelope(f"r{i}@hosted.test"), MESSAGE)
        assert result.kind == "delivered"
    assert heard[0] == ("hosted.test", ("mta5.am0.yahoodns.net",))
    assert shaper.provider("hosted.test") == "yahoo"
    # Yahoo's 20 messages per connection applied from the first message on.
    assert mx.connections == 2


async def test_hosted_google_domain_gets_googles_tls_rule(fake_mx, dns_zone, transports) -> None:
    mx = fake_mx(host=next_loopback(), port=free_port())
    mx_route(dns_zone, "workspace.test", mx, "aspmx.l.google.com")
    shaper = PolicyShaper(default_policy(), "shape")
    s = settings(port=mx.port, allow_private_destinations=True)
    t = transports(s, dns_zone, limits=shaper_limits(shaper), on_mx=shaper.learn_mx)
    (result,) = await t.send(envelope("a@workspace.test"), MESSAGE)
    assert (result.code, result.enhanced) == (451, "4.7.4")  # Google requires TLS
    assert shaper.provider("workspace.test") == "google"
    assert mx.transactions == 0


async def test_on_mx_only_for_routing_keys_that_are_the_domain(
    fake_mx, dns_zone, transports
) -> None:
    mx = fake_mx(host=next_loopback(), port=free_port())
    mx_route(dns_zone, "gmail.test", mx)
    heard: list[tuple[str, tuple[str, ...]]] = []
    s = settings(port=mx.port, allow_private_destinations=True)
    t = transports(s, dns_zone, on_mx=lambda k, h: heard.append((k, h)))
    (result,) = await t.send(envelope("a@gmail.test", key="google"), MESSAGE)
    assert result.kind == "delivered"
    assert heard == []  # already a provider key: nothing to roll up
    await t.send(envelope("b@gmail.test"), MESSAGE)
    assert heard == [("gmail.test", ("mx.gmail.test",))]


def test_limits_from_the_policy_and_shard_share() -> None:
    policy = load_policy_text(POLICY)
    whole = limits_from_shaping("big", policy.resolve("big"))
    assert whole == TransportLimits("big", 2, 2, "required", Rate(60, 60, 8))
    share = limits_from_shaping("big#2", policy.resolve("big#2"))
    assert share.connection_rate == Rate(15, 60, 2)
    plain = limits_from_shaping("x.example", policy.resolve("x.example"))
    assert plain.provider is None and plain.tls == "opportunistic"


def test_batches() -> None:
    rcpts = [f"r{i}" for i in range(7)]
    assert batches(rcpts, 3) == [["r0", "r1", "r2"], ["r3", "r4", "r5"], ["r6"]]
    assert batches(rcpts, 0) == [rcpts]
    assert batches(rcpts, 7) == [rcpts]


# --- the connections-open gauge ------------------------------------------------------------------


async def test_connections_open_gauge_by_pool_and_provider(fake_mx, transports) -> None:
    mx = fake_mx()
    providers = {"google": TransportLimits(provider="google"), "plain.test": TransportLimits()}
    s = settings(static_routes=f"*={mx.address}")
    t = transports(s, limits=providers.__getitem__)
    before = gauge("gauge-pool", "google"), gauge("gauge-pool", "other")
    await t.send(envelope("a@gmail.com", key="google", pool="gauge-pool"), MESSAGE)
    await t.send(envelope("a@plain.test", pool="gauge-pool"), MESSAGE)
    # Both connections wait idle in the pool, each counted under the destination it served.
    assert gauge("gauge-pool", "google") == before[0] + 1
    assert gauge("gauge-pool", "other") == before[1]  # reused the google-opened connection
    await t.close()
    assert (gauge("gauge-pool", "google"), gauge("gauge-pool", "other")) == before


async def test_gauge_follows_quit_failure_and_drop(fake_mx, transports) -> None:
    pool = "gauge-pool-2"
    mx = fake_mx()
    s = settings(static_routes=f"*={mx.address}")
    t = transports(s, limits=fixed(messages_per_connection=1))
    await t.send(envelope("a@plain.test", pool=pool), MESSAGE)
    assert gauge(pool, "other") == 0  # QUIT after its one message
    mx.script.greeting = "421 4.3.2 go away"
    (refused,) = await t.send(envelope("b@plain.test", pool=pool), MESSAGE)
    assert refused.kind == "transient" and gauge(pool, "other") == 0
    mx.script.greeting = None
    mx.script.drop_at = "rcpt"
    (dropped,) = await t.send(envelope("c@plain.test", pool=pool), MESSAGE)
    assert dropped.kind == "transient" and gauge(pool, "other") == 0


# --- the delivery service's wiring ---------------------------------------------------------------


async def test_make_transport_follows_the_pools_shaper(fake_mx, monkeypatch) -> None:
    mx = fake_mx()
    monkeypatch.setenv("MAILSLUICE_OUTBOUND_STATIC_ROUTES", f"*={mx.address}")
    policy = load_policy_text(POLICY)
    shaper = PolicyShaper(policy, "shape")
    t = make_transport(DnsSettings(nameservers="127.0.0.1:9"), shaper)
    try:
        results = await t.send(envelope(*(f"r{i}@wired.test" for i in range(5))), MESSAGE)
    finally:
        await t.close()
    assert [r.kind for r in results] == ["delivered"] * 5
    assert mx.transactions == 3 and mx.connections == 2
