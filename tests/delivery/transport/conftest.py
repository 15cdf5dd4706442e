"""Fixtures of the transport tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from support.dns_server import DnsServer
from support.transport import resolver_for

from mailsluice.delivery.transport.client import Transport
from mailsluice.delivery.transport.settings import OutboundSettings
from mailsluice.resolver import DnsSettings, make_resolver

NO_DNS = DnsSettings(nameservers="127.0.0.1:9", timeout_s=0.5)


@pytest.fixture
async def transports() -> AsyncIterator[Callable[..., Transport]]:
    made: list[Transport] = []

    def make(s: OutboundSettings, dns: DnsServer | None = None, **kw: Any) -> Transport:
        """A transport asking `dns` (None: a port where nothing answers, so a lookup times
        out soon); `kw` go to Transport (clock, limits, on_mx, ...)."""
        resolver = resolver_for(dns) if dns else make_resolver(NO_DNS)
        t = Transport(s, resolver, **kw)
        made.append(t)
        return t

    yield make
    for t in made:
        await t.close()
