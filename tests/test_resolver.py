"""MX lookups classified the way SMTP needs them, against a real DNS server on loopback."""

from __future__ import annotations

import pytest
from support.dns_server import DnsServer

from mailsluice.config import ConfigError
from mailsluice.resolver import (
    DnsSettings,
    lookup_mx,
    lookup_mx_addresses,
    make_resolver,
    parse_nameservers,
    resolve_addresses,
)


def resolver_for(nameserver: str, timeout: float = 2.0):  # type: ignore[no-untyped-def]
    return make_resolver(DnsSettings(nameservers=nameserver, timeout_s=timeout))


async def test_mx_records_come_in_preference_order(
    dns_zone: DnsServer, dns_nameserver: str
) -> None:
    dns_zone.set_mx("example.test", [(20, "mx2.example.test"), (10, "mx1.example.test")], ttl=120)
    answer = await lookup_mx(resolver_for(dns_nameserver), "Example.Test.")
    assert answer.kind == "mx"
    assert answer.hosts == ("mx1.example.test", "mx2.example.test")
    assert answer.preferences == (10, 20)
    assert answer.ttl == 120
    assert answer.domain == "example.test"


async def test_null_mx_is_recognised(dns_zone: DnsServer, dns_nameserver: str) -> None:
    dns_zone.set_null_mx("nomail.test")
    answer = await lookup_mx(resolver_for(dns_nameserver), "nomail.test")
    assert answer.kind == "null_mx"
    assert answer.hosts == ()


async def test_nxdomain(dns_zone: DnsServer, dns_nameserver: str) -> None:
    dns_zone.set_nxdomain("gone.test")
    assert (await lookup_mx(resolver_for(dns_nameserver), "gone.test")).kind == "nxdomain"


async def test_implicit_mx_when_only_an_address_exists(
    dns_zone: DnsServer, dns_nameserver: str
) -> None:
    dns_zone.set_a("plain.test", ["127.0.0.9"])
    answer = await lookup_mx(resolver_for(dns_nameserver), "plain.test")
    assert answer.kind == "implicit"
    assert answer.hosts == ("plain.test",)


async def test_name_without_mx_or_address_is_undeliverable(
    dns_zone: DnsServer, dns_nameserver: str
) -> None:
    dns_zone.set_txt("textonly.test", ["v=spf1 -all"])
    assert (await lookup_mx(resolver_for(dns_nameserver), "textonly.test")).kind == "nxdomain"


@pytest.mark.parametrize("failure", ["servfail", "timeout"])
async def test_failures_are_temporary(
    dns_zone: DnsServer, dns_nameserver: str, failure: str
) -> None:
    getattr(dns_zone, f"set_{failure}")("flaky.test")
    answer = await lookup_mx(resolver_for(dns_nameserver, timeout=0.5), "flaky.test")
    assert answer.kind == "temp_fail"
    assert answer.detail


async def test_addresses_of_a_host(dns_zone: DnsServer, dns_nameserver: str) -> None:
    dns_zone.set_a("mx.test", ["127.0.0.5"])
    dns_zone.set_aaaa("mx.test", ["::1"])
    assert await resolve_addresses(resolver_for(dns_nameserver), "mx.test") == ["127.0.0.5", "::1"]


async def test_mx_lookup_with_the_hosts_addresses(dns_zone: DnsServer, dns_nameserver: str) -> None:
    resolver = resolver_for(dns_nameserver)
    dns_zone.set_mx("lan.test", [(10, "mx1.lan.test"), (20, "mx2.lan.test"), (30, "10.9.9.9")])
    dns_zone.set_a("mx1.lan.test", ["127.0.0.7"])
    dns_zone.set_aaaa("mx2.lan.test", ["fd00::7"])
    answer = await lookup_mx_addresses(resolver, "lan.test")
    assert answer.addresses == ("127.0.0.7", "fd00::7", "10.9.9.9")
    assert answer.only_forbidden_addresses()
    dns_zone.set_a("addr.test", ["100.64.1.1"])  # implicit MX
    implicit = await lookup_mx_addresses(resolver, "addr.test")
    assert (implicit.kind, implicit.addresses) == ("implicit", ("100.64.1.1",))
    assert implicit.only_forbidden_addresses()
    dns_zone.set_mx("half.test", [(10, "mx1.lan.test"), (20, "slow.half.test")])
    dns_zone.set_timeout("slow.half.test")
    half = await lookup_mx_addresses(resolver_for(dns_nameserver, timeout=0.5), "half.test")
    assert (half.kind, half.addresses) == ("mx", ())  # not known in full
    assert not half.only_forbidden_addresses()


def test_nameserver_setting_forms() -> None:
    assert parse_nameservers("127.0.0.1:5353, 10.0.0.1") == [("127.0.0.1", 5353), ("10.0.0.1", 53)]
    assert parse_nameservers("[::1]:5300,::1") == [("::1", 5300), ("::1", 53)]
    assert parse_nameservers("") == []


def test_bad_nameserver_setting_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from mailsluice.config import load

    monkeypatch.setenv("MAILSLUICE_DNS_NAMESERVERS", "not-an-address:53")
    with pytest.raises(ConfigError) as exc:
        load(DnsSettings)
    assert exc.value.code == 2
    assert "MAILSLUICE_DNS_NAMESERVERS" in capsys.readouterr().err
