"""Fixtures of the transport tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from support.dns_server import DnsServer
from support.transport import resolver_for

from mailsluice.delivery.transport.client import Transport
from mailsluice.delivery.transport.settings import OutboundSettings
from mailsluice.resolver import DnsSettings, make_resolver


@pytest.fixture
async def transports() -> AsyncIterator[Callable[..., Transport]]:
    made: list[Transport] = []

    def make(s: OutboundSettings, dns: DnsServer | None = None) -> Transport:
        resolver = (
            resolver_for(dns) if dns else make_resolver(DnsSettings(nameservers="127.0.0.1:9"))
        )
        t = Transport(s, resolver)
        made.append(t)
        return t

    yield make
    for t in made:
        await t.close()
