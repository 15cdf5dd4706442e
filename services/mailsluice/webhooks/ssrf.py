"""Which addresses a webhook may be sent to (server-side request forgery).

A tenant chooses its webhook URL, so without a check it could make Mailsluice POST to the
cluster's own services or a cloud metadata endpoint. Every address a URL's host resolves to is
checked at send time (the sender connects only to checked addresses: http.py), and an address
that is not globally routable is refused unless a configured network allows it. Pure.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class Refused(Exception):
    """A webhook URL's host is (or resolves to) an address we do not send to."""


def parse_networks(value: str) -> list[Network]:
    """Comma-separated CIDRs; ValueError for a wrong one."""
    return [ipaddress.ip_network(i.strip(), strict=False) for i in value.split(",") if i.strip()]


def refusal(address: str, allowed: Sequence[Network] = ()) -> str | None:
    """Why `address` must not be connected to, or None when it may."""
    try:
        ip: Address = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone
    except ValueError:
        return f"{address!r} is not an IP address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    if any(ip.version == net.version and ip in net for net in allowed):
        return None
    for kind, hit in (
        ("loopback", ip.is_loopback),
        ("unspecified", ip.is_unspecified),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("reserved", ip.is_reserved),
        ("private", ip.is_private),
    ):
        if hit:
            return f"{ip} is a {kind} address"
    if not ip.is_global:
        return f"{ip} is not a globally routable address"
    return None


def check(address: str, allowed: Sequence[Network] = ()) -> None:
    """Raise Refused when `address` may not be connected to."""
    reason = refusal(address, allowed)
    if reason is not None:
        raise Refused(reason)
