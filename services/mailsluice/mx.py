"""What an MX lookup answered, classified the way SMTP needs it (RFC 5321 §5.1, RFC 7505 null
MX), and which addresses mail must never go to. Plain data: the verdicts at ingest and the
routing at delivery read it without a resolver; resolver.py produces it from DNS."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Literal

MxKind = Literal["mx", "implicit", "null_mx", "nxdomain", "temp_fail"]


@dataclass(frozen=True)
class MxAnswer:
    """The outcome of an MX lookup. `hosts` is in preference order (lowest first); for an
    implicit MX (no MX records, RFC 5321 §5.1) it is the domain itself."""

    domain: str
    kind: MxKind
    hosts: tuple[str, ...] = ()
    ttl: int = 0
    detail: str = ""
    preferences: tuple[int, ...] = field(default=(), compare=False)
    # The hosts' addresses when every host was resolved (ingest asks for them); () when not
    # asked, or when a lookup failed temporarily and the answer is not known in full.
    addresses: tuple[str, ...] = field(default=(), compare=False)

    def only_forbidden_addresses(self) -> bool:
        """True when the hosts were resolved and every address is one mail must not go to."""
        return bool(self.addresses) and all(is_forbidden_address(a) for a in self.addresses)


def is_forbidden_address(address: str) -> bool:
    """True for addresses mail must not be sent to unless configuration names them: private,
    loopback, link-local, shared (CGNAT), reserved, multicast and unspecified."""
    try:
        ip: Any = ipaddress.ip_address(address)
    except ValueError:
        return True
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    # is_global is False for private, loopback, link-local, 100.64/10, reserved, unspecified;
    # multicast has to be checked on its own (224/4 counts as "global").
    return bool(not ip.is_global or ip.is_multicast)
