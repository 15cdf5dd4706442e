"""The List-Unsubscribe mailto address at ingest, over real SMTP with the real broker: any
client may send to unsubscribe+TOKEN@<unsubscribe domain>; a good token becomes an
`unsubscribe` event acknowledged before the 250, a bad one gets 550 5.1.1 at RCPT, and such a
transaction never carries mail to relay."""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import AsyncIterator

import pytest
from support.ingest import events, ingest_settings, uid

from mailsluice.consent.settings import UnsubscribeSettings
from mailsluice.consent.tokens import Claim, KeyRing
from mailsluice.contracts.events import EventType
from mailsluice.ingest.service import IngestService
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.resolver import DnsSettings

SECRET = "m" * 32
KEYS = KeyRing({"k1": SECRET.encode()})
TRUSTED_IP = "127.0.0.2"  # the sending application; 127.0.0.1 is a stranger here
MESSAGE = b"From: reader@provider.test\r\nSubject: unsubscribe\r\n\r\nunsubscribe\r\n"


@pytest.fixture(scope="module")
async def ingest(
    kafka_settings: KafkaSettings, dns_nameserver: str
) -> AsyncIterator[IngestService]:
    service = IngestService(
        ingest_settings(trusted_networks=f"{TRUSTED_IP}/32", verify_domains=False),
        kafka_settings,
        DnsSettings(nameservers=dns_nameserver, timeout_s=1.0),
        is_suppressed=lambda _address, _scopes: False,
        serve_http=False,
        unsubscribe=UnsubscribeSettings(mailto_domain="Unsub.test", keys=f"k1:{SECRET}"),
    )
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


def transaction(
    port: int, recipients: list[str], *, source: str = "127.0.0.1"
) -> tuple[list[tuple[int, str]], tuple[int, str] | None]:
    """RCPT replies and the DATA reply (None when no recipient was accepted)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=(source, 0)) as client:
        client.ehlo("provider.test")
        code, text = client.mail("reader@provider.test")
        assert code == 250, (code, text)
        answers = [(c, t.decode()) for c, t in (client.rcpt(r) for r in recipients)]
        if not any(code == 250 for code, _ in answers):
            client.rset()
            return answers, None
        code, text = client.data(MESSAGE)
        return answers, (code, text.decode())


def mailto(claim: Claim, keys: KeyRing = KEYS) -> str:
    return f"unsubscribe+{keys.mint(claim)}@UNSUB.test"


async def test_a_stranger_mailing_the_address_unsubscribes_its_recipient(
    ingest: IngestService, kafka_settings: KafkaSettings
) -> None:
    reader = f"reader-{uid()}@provider.test"
    address = mailto(Claim(reader, "domain:acme.example", domain="acme.example"))
    assert len(address.partition("@")[0]) > 64  # longer than RFC 5321's minimum, taken anyway
    answers, data = await asyncio.to_thread(transaction, ingest.port, [address])
    assert answers == [(250, "2.1.5 Recipient ok")]
    assert data == (250, "2.0.0 Ok: 1 unsubscribe request(s) recorded")
    # acknowledged before the 250: it is there now
    found = await events(kafka_settings, lambda e: e.recipient == reader, expect=0)
    assert [(e.type, e.scope, e.reason, e.sender) for e in found] == [
        (EventType.UNSUBSCRIBE, "domain:acme.example", "mailto", "acme.example")
    ]


async def test_a_token_that_does_not_verify_gets_550_and_produces_nothing(
    ingest: IngestService, kafka_settings: KafkaSettings
) -> None:
    reader = f"reader-{uid()}@provider.test"
    forged = mailto(Claim(reader, "global"), KeyRing({"k1": b"f" * 32}))
    retired = mailto(Claim(reader, "global"), KeyRing({"k0": b"r" * 32}))
    answers, data = await asyncio.to_thread(
        transaction, ingest.port, [forged, retired, "unsubscribe+zzzz@unsub.test"]
    )
    assert answers == [(550, "5.1.1 Unknown unsubscribe address")] * 3
    assert data is None
    assert await events(kafka_settings, lambda e: e.recipient == reader, expect=0) == []


async def test_unsubscribe_addresses_take_a_transaction_of_their_own(
    ingest: IngestService,
) -> None:
    address = mailto(Claim(f"reader-{uid()}@provider.test", "global"))
    relay = f"someone-{uid()}@elsewhere.test"
    separate = (452, "4.5.3 Unsubscribe requests go in a transaction of their own")
    answers, _ = await asyncio.to_thread(
        transaction, ingest.port, [address, relay], source=TRUSTED_IP
    )
    assert answers[0][0] == 250 and answers[1] == separate
    answers, _ = await asyncio.to_thread(
        transaction, ingest.port, [relay, address], source=TRUSTED_IP
    )
    assert answers[0][0] == 250 and answers[1] == separate
    # a stranger still cannot relay
    answers, _ = await asyncio.to_thread(transaction, ingest.port, [relay])
    assert answers[0][0] == 530
