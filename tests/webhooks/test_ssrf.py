"""Which addresses a webhook may go to: loopback, private, link-local, multicast, unspecified,
reserved and other non-global addresses are refused unless a configured network allows them."""

from __future__ import annotations

import pytest

from mailsluice.webhooks.ssrf import Refused, check, parse_networks, refusal


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fd00::1", "private"),
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("fe80::1%eth0", "link-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("100.64.0.1", "not a globally routable"),  # carrier-grade NAT
        ("localhost", "not an IP address"),
    ],
)
def test_addresses_that_are_not_global_are_refused(address: str, kind: str) -> None:
    reason = refusal(address)
    assert reason is not None and kind in reason
    with pytest.raises(Refused):
        check(address)


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"])
def test_global_addresses_are_allowed(address: str) -> None:
    assert refusal(address) is None


def test_configured_networks_allow_what_they_hold_and_nothing_else() -> None:
    allowed = parse_networks("127.0.0.0/8, 10.20.0.0/16")
    assert refusal("127.0.0.1", allowed) is None
    assert refusal("::ffff:127.0.0.1", allowed) is None
    assert refusal("10.20.3.4", allowed) is None
    assert refusal("10.21.0.1", allowed) is not None
    assert refusal("::1", allowed) is not None  # an IPv4 network allows no IPv6 loopback


def test_wrong_networks_are_errors() -> None:
    with pytest.raises(ValueError):
        parse_networks("127.0.0.0/33")
    assert parse_networks("") == []
