"""Routing: static routes and smarthost, MX answers, private-address refusal, the TTL cache."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from mailsluice.delivery.transport.routing import (
    Hop,
    HostAnswer,
    Route,
    RouteFailure,
    Router,
    TtlCache,
    is_forbidden_address,
    static_endpoint,
)
from mailsluice.delivery.transport.settings import (
    Endpoint,
    OutboundSettings,
    parse_endpoint,
    parse_static_routes,
)
from mailsluice.mx import MxAnswer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeDns:
    def __init__(self) -> None:
        self.mx: dict[str, MxAnswer] = {}
        self.hosts: dict[str, HostAnswer] = {}
        self.mx_calls: list[str] = []
        self.host_calls: list[str] = []

    async def lookup_mx(self, domain: str) -> MxAnswer:
        self.mx_calls.append(domain)
        return self.mx.get(domain, MxAnswer(domain, "nxdomain"))

    async def lookup_host(self, host: str) -> HostAnswer:
        self.host_calls.append(host)
        return self.hosts.get(host, HostAnswer(()))


def make_router(dns: FakeDns, clock: Clock | None = None, **kw: Any) -> Router:
    s = OutboundSettings(**kw)
    return Router(s, dns.lookup_mx, dns.lookup_host, clock=clock or Clock())


# --- settings parsing -----------------------------------------------------------------------


def test_parse_endpoint() -> None:
    assert parse_endpoint("mx.example.com") == Endpoint("mx.example.com", 25)
    assert parse_endpoint("127.0.0.5:2525") == Endpoint("127.0.0.5", 2525)
    assert parse_endpoint("[::1]:2525") == Endpoint("::1", 2525)
    assert parse_endpoint("::1") == Endpoint("::1", 25)
    assert parse_endpoint("Relay.Example.COM.:587") == Endpoint("relay.example.com", 587)
    for bad in ("", "host:0", "host:70000", "host:x", "[::1]x", "[zz]:25"):
        with pytest.raises(ValueError):
            parse_endpoint(bad)


def test_parse_static_routes() -> None:
    routes = parse_static_routes("example.com=127.0.0.5:2525, .corp.test=relay, *=127.0.0.1:1025")
    assert routes == {
        "example.com": Endpoint("127.0.0.5", 2525),
        ".corp.test": Endpoint("relay", 25),
        "*": Endpoint("127.0.0.1", 1025),
    }
    for bad in ("example.com", "=1.2.3.4", "a.com=1.2.3.4,a.com=1.2.3.5", "a.com=host:99999"):
        with pytest.raises(ValueError):
            parse_static_routes(bad)


def test_settings_validate_at_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "MAILSLUICE_OUTBOUND_STATIC_ROUTES", "example.com=127.0.0.5:2525,*=sink:1025"
    )
    monkeypatch.setenv("MAILSLUICE_OUTBOUND_TLS_POLICY", "required")
    s = OutboundSettings()
    assert s.routes()["*"] == Endpoint("sink", 1025)
    assert s.tls_policy == "required"
    assert (s.connect_timeout_s, s.greeting_timeout_s, s.data_end_timeout_s) == (30, 300, 600)
    monkeypatch.setenv("MAILSLUICE_OUTBOUND_STATIC_ROUTES", "example.com")
    with pytest.raises(ValidationError):
        OutboundSettings()
    monkeypatch.delenv("MAILSLUICE_OUTBOUND_STATIC_ROUTES")
    for name, bad in (
        ("SMARTHOST", "relay:0"),
        ("SOURCE_ADDRESSES", "not-an-ip"),
        ("SOURCE_ADDRESSES", "127.0.0.21,mx.example.test"),
        ("SOURCE_ADDRESSES", "127.0.0.21,127.0.0.21"),
        ("SOURCE_ADDRESSES", "2001:db8::1,2001:DB8:0::1"),  # the same address, spelled twice
        ("SOURCE_ADDRESSES", "127.0.0.0/24"),
        ("EHLO_NAME", "two words"),
        ("TLS_POLICY", "sometimes"),
    ):
        monkeypatch.setenv(f"MAILSLUICE_OUTBOUND_{name}", bad)
        with pytest.raises(ValidationError):
            OutboundSettings()
        monkeypatch.delenv(f"MAILSLUICE_OUTBOUND_{name}")


def test_source_addresses_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert OutboundSettings().source_addresses == ()
    monkeypatch.setenv("MAILSLUICE_OUTBOUND_SOURCE_ADDRESSES", " 127.0.0.21, 2001:DB8::1 ,")
    assert OutboundSettings().source_addresses == ("127.0.0.21", "2001:db8::1")
    monkeypatch.setenv("MAILSLUICE_OUTBOUND_SOURCE_ADDRESSES", "")
    assert OutboundSettings().source_addresses == ()
    assert OutboundSettings(source_addresses=["127.0.0.22"]).source_addresses == ("127.0.0.22",)


# --- pure functions ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "forbidden"),
    [
        ("8.8.8.8", False),
        ("2001:4860:4860::8888", False),
        ("10.1.2.3", True),
        ("172.16.0.1", True),
        ("192.168.1.1", True),
        ("127.0.0.5", True),
        ("169.254.1.1", True),
        ("100.64.0.1", True),  # CGNAT / shared address space
        ("224.0.0.1", True),
        ("0.0.0.0", True),
        ("255.255.255.255", True),
        ("::1", True),
        ("fe80::1", True),
        ("fc00::1", True),
        ("::ffff:10.0.0.1", True),
        ("::ffff:8.8.8.8", False),
        ("ff02::1", True),
        ("::", True),
        ("not an address", True),
    ],
)
def test_is_forbidden_address(address: str, forbidden: bool) -> None:
    assert is_forbidden_address(address) is forbidden


def test_static_endpoint_lookup_order() -> None:
    routes = parse_static_routes("example.com=a:1,.example.com=b:2,.com=c:3")
    smart = Endpoint("smart", 25)
    assert static_endpoint("EXAMPLE.com.", routes, smart) == Endpoint("a", 1)
    assert static_endpoint("mail.example.com", routes, smart) == Endpoint("b", 2)
    assert static_endpoint("other.com", routes, smart) == Endpoint("c", 3)
    assert static_endpoint("other.org", routes, smart) == smart
    assert static_endpoint("other.org", routes, None) is None
    assert static_endpoint("other.org", {**routes, "*": Endpoint("all", 9)}, smart) == Endpoint(
        "all", 9
    )


def test_ttl_cache_expiry_and_bound() -> None:
    clock = Clock()
    cache = TtlCache(2, clock)
    cache.put(("mx", "a"), 1, 10)
    cache.put(("mx", "b"), 2, 100)
    clock.now += 9
    assert cache.get(("mx", "a")) == 1
    clock.now += 1
    assert cache.get(("mx", "a")) is None
    cache.put(("mx", "c"), 3, 100)
    cache.put(("mx", "d"), 4, 100)  # evicts the least recently used ("b")
    assert len(cache) == 2
    assert cache.get(("mx", "b")) is None
    assert cache.get(("mx", "d")) == 4
    TtlCache(0, clock).put(("mx", "x"), 1, 10)  # size 0 caches nothing, no error


# --- the router -------------------------------------------------------------------------------


async def test_mx_preference_order_and_hops() -> None:
    dns = FakeDns()
    dns.mx["example.com"] = MxAnswer(
        "example.com", "mx", ("mx1.example.com", "mx2.example.com"), 300, preferences=(10, 20)
    )
    dns.hosts["mx1.example.com"] = HostAnswer(("192.0.2.1", "2001:db8::1"), 300)
    dns.hosts["mx2.example.com"] = HostAnswer(("198.51.100.7",), 300)
    router = make_router(dns, allow_private_destinations=True)  # documentation ranges
    route = await router.route("Example.COM")
    assert isinstance(route, Route)
    assert [str(h) for h in route.hops] == [
        "mx1.example.com[192.0.2.1]:25",
        "mx1.example.com[[2001:db8::1]]:25",
        "mx2.example.com[198.51.100.7]:25",
    ]
    assert not route.static


async def test_mx_answers_are_cached_by_ttl() -> None:
    dns, clock = FakeDns(), Clock()
    dns.mx["example.com"] = MxAnswer("example.com", "mx", ("mx.example.com",), 60)
    dns.hosts["mx.example.com"] = HostAnswer(("8.8.8.8",), 30)
    router = make_router(dns, clock)
    for _ in range(3):
        assert isinstance(await router.route("example.com"), Route)
    assert (dns.mx_calls, dns.host_calls) == (["example.com"], ["mx.example.com"])
    clock.now += 31  # the A record expired, the MX not yet
    await router.route("example.com")
    assert (len(dns.mx_calls), len(dns.host_calls)) == (1, 2)
    clock.now += 29  # now the MX expired (60 s), the re-read A record not yet
    await router.route("example.com")
    assert (len(dns.mx_calls), len(dns.host_calls)) == (2, 2)


async def test_temp_fail_is_not_cached() -> None:
    dns = FakeDns()
    dns.mx["flaky.com"] = MxAnswer("flaky.com", "temp_fail", detail="SERVFAIL")
    router = make_router(dns)
    for _ in range(2):
        result = await router.route("flaky.com")
        assert result == RouteFailure(
            450, "4.4.3", "Temporary DNS failure looking up the recipient domain (SERVFAIL)"
        )
    assert dns.mx_calls == ["flaky.com", "flaky.com"]


async def test_failures_by_kind() -> None:
    dns = FakeDns()
    dns.mx["null.com"] = MxAnswer("null.com", "null_mx", ttl=300)
    router = make_router(dns)
    null = await router.route("null.com")
    gone = await router.route("gone.com")
    assert isinstance(null, RouteFailure) and (null.code, null.enhanced) == (556, "5.1.10")
    assert isinstance(gone, RouteFailure) and (gone.code, gone.enhanced) == (550, "5.1.2")


async def test_implicit_mx_uses_the_domain() -> None:
    dns = FakeDns()
    dns.mx["plain.com"] = MxAnswer("plain.com", "implicit", ("plain.com",))
    dns.hosts["plain.com"] = HostAnswer(("8.8.4.4",), 300)
    route = await make_router(dns).route("plain.com")
    assert route == Route((Hop("plain.com", "8.8.4.4", 25),), mx_hosts=("plain.com",))


async def test_private_mx_refused_but_public_backup_used() -> None:
    dns = FakeDns()
    dns.mx["mixed.com"] = MxAnswer("mixed.com", "mx", ("inside.mixed.com", "outside.mixed.com"))
    dns.hosts["inside.mixed.com"] = HostAnswer(("10.0.0.5",))
    dns.hosts["outside.mixed.com"] = HostAnswer(("8.8.8.8",))
    route = await make_router(dns).route("mixed.com")
    mx_hosts = ("inside.mixed.com", "outside.mixed.com")  # all of them, for the provider rollup
    assert route == Route((Hop("outside.mixed.com", "8.8.8.8", 25),), mx_hosts=mx_hosts)
    dns.hosts["outside.mixed.com"] = HostAnswer(("127.0.0.1", "::1"))
    refused = await make_router(dns).route("mixed.com")
    assert isinstance(refused, RouteFailure) and (refused.code, refused.enhanced) == (554, "5.4.4")
    allowed = await make_router(dns, allow_private_destinations=True).route("mixed.com")
    assert isinstance(allowed, Route) and len(allowed.hops) == 3


async def test_mx_host_lookup_failures() -> None:
    dns = FakeDns()
    dns.mx["a.com"] = MxAnswer("a.com", "mx", ("mx1.a.com", "mx2.a.com"))
    dns.hosts["mx1.a.com"] = HostAnswer((), temp_fail="DNS timeout")
    route = await make_router(dns).route("a.com")  # mx2 does not exist, mx1 timed out
    assert isinstance(route, RouteFailure) and (route.code, route.enhanced) == (450, "4.4.3")
    dns.hosts["mx1.a.com"] = HostAnswer(())
    route = await make_router(dns).route("a.com")
    assert isinstance(route, RouteFailure) and (route.code, route.enhanced) == (550, "5.4.4")


async def test_static_route_and_smarthost_bypass_mx() -> None:
    dns = FakeDns()
    dns.hosts["relay.internal"] = HostAnswer(("10.9.8.7",))
    router = make_router(
        dns, static_routes="local.test=127.0.0.5:2525", smarthost="relay.internal:587"
    )
    assert await router.route("local.test") == Route(
        (Hop("127.0.0.5", "127.0.0.5", 2525),), static=True
    )
    # Named by configuration, so a private address is fine.
    assert await router.route("anything.com") == Route(
        (Hop("relay.internal", "10.9.8.7", 587),), static=True
    )
    assert dns.mx_calls == []


async def test_max_hops() -> None:
    dns = FakeDns()
    hosts = tuple(f"mx{i}.big.com" for i in range(8))
    dns.mx["big.com"] = MxAnswer("big.com", "mx", hosts)
    for i, h in enumerate(hosts):
        dns.hosts[h] = HostAnswer((f"8.8.{i}.1", f"8.8.{i}.2"))
    route = await make_router(dns, max_hops=5).route("big.com")
    assert isinstance(route, Route) and len(route.hops) == 5


async def test_equal_preferences_are_shuffled_within_their_level() -> None:
    dns = FakeDns()
    hosts = ("a.eq.com", "b.eq.com", "c.eq.com", "d.eq.com")
    dns.mx["eq.com"] = MxAnswer("eq.com", "mx", hosts, preferences=(10, 10, 20, 20))
    for i, h in enumerate(hosts):
        dns.hosts[h] = HostAnswer((f"8.8.8.{i + 1}",))
    router = Router(
        OutboundSettings(),
        dns.lookup_mx,
        dns.lookup_host,
        clock=Clock(),
        shuffle=lambda items: items.reverse(),
    )
    route = await router.route("eq.com")
    assert isinstance(route, Route)
    assert [h.name for h in route.hops] == ["b.eq.com", "a.eq.com", "d.eq.com", "c.eq.com"]
    # The MX hosts for the provider rollup keep DNS's order: the shuffle does not reach them.
    assert route.mx_hosts == hosts


async def test_static_routes_carry_no_mx_hosts() -> None:
    router = make_router(FakeDns(), static_routes="local.test=127.0.0.5:2525")
    route = await router.route("local.test")
    assert isinstance(route, Route) and route.static and route.mx_hosts == ()
