"""Fixtures of the ingest tests: one IngestService per module on loopback (a module that needs
other settings defines its own `ingest`), and a domain with an MX record."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from support.dns_server import DnsServer
from support.ingest import running_ingest, uid

from mailsluice.ingest.service import IngestService
from mailsluice.kafka.settings import KafkaSettings


@pytest.fixture(scope="module")
async def ingest(
    kafka_settings: KafkaSettings, dns_nameserver: str
) -> AsyncIterator[IngestService]:
    """An ingest with the default settings and the real suppression store."""
    async with running_ingest(kafka_settings, dns_nameserver) as service:
        yield service


@pytest.fixture(scope="module")
def domain(dns_server: DnsServer) -> str:
    """A domain of this module's own, with an MX record, so ingest accepts its recipients."""
    name = f"d-{uid()}.test"
    dns_server.set_mx(name, [(10, f"mx.{name}")])
    return name
