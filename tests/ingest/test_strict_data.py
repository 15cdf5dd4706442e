"""Headers and destinations over real SMTP: a field RFC 5322 allows once, given twice, gets
550 5.6.0 at the end of DATA; a recipient domain whose MX hosts all sit on non-global addresses
gets 550 5.4.4 at RCPT (unless private destinations are allowed, as in the other tests)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from support.dns_server import DnsServer
from support.ingest import RawClient, running_ingest, uid

from mailsluice.ingest import replies
from mailsluice.ingest.service import IngestService


@pytest.fixture(scope="module")
async def strict(kafka_settings, dns_nameserver) -> AsyncIterator[IngestService]:
    """The production defaults for both: no private destinations, RFC 5322's single fields."""
    async with running_ingest(
        kafka_settings,
        dns_nameserver,
        is_suppressed=lambda a, _scopes: False,
        allow_private_destinations=False,
    ) as service:
        yield service


@pytest.fixture(scope="module")
def public_domain(dns_server: DnsServer) -> str:
    name = f"pub-{uid()}.test"
    dns_server.set_mx(name, [(10, f"mx.{name}")])
    dns_server.set_a(f"mx.{name}", ["8.8.8.8"])
    return name


async def send(port: int, rcpt: str, message: bytes) -> str:
    """One transaction; the reply at the end of DATA."""
    client = await RawClient.connect(port)
    try:
        assert (await client.cmd("EHLO client.test")).startswith("250-")
        assert await client.cmd("MAIL FROM:<s@client.test>") == replies.S250_SENDER_OK
        assert await client.cmd(f"RCPT TO:<{rcpt}>") == replies.S250_RCPT_OK
        assert (await client.cmd("DATA")).startswith("354 ")
        await client.send(message + b"\r\n.\r\n")
        return await client.reply()
    finally:
        await client.close()


# --- headers ------------------------------------------------------------------------------------

BODY = b"Subject: hello\r\n\r\nbody"


@pytest.mark.parametrize(
    ("header", "name"),
    [
        (b"From: a@client.test\r\nFrom: ceo@bank.test\r\n", "From"),
        (b"From: a@client.test\r\nFROM: ceo@bank.test\r\n", "From"),
        (b"Message-ID: <1@client.test>\r\nmessage-id: <2@client.test>\r\n", "Message-Id"),
        (b"Date: Thu, 3 Dec 2026 10:00:00 +0000\r\nDate:\r\n Fri, 4 Dec 2026 10:00:00\r\n", "Date"),
        (b"Sender: a@client.test\r\nSender:\tb@client.test\r\n", "Sender"),
        (b"Subject: one\r\n", "Subject"),
    ],
)
async def test_a_field_allowed_once_given_twice_is_refused(
    strict: IngestService, public_domain: str, header: bytes, name: str
) -> None:
    reply = await send(strict.port, f"r@{public_domain}", header + BODY)
    assert reply == f"550 5.6.0 Message has more than one {name} header field (RFC 5322 3.6)"


async def test_one_of_each_is_queued(strict: IngestService, public_domain: str) -> None:
    header = (
        b"From: a@client.test\r\nSender: b@client.test\r\nTo: r@x.test\r\n"
        b"Message-ID: <1@client.test>\r\nDate: Thu, 3 Dec 2026 10:00:00 +0000\r\n"
        b"Received: from a\r\nReceived: from b\r\nResent-From: c@client.test\r\n"
        b"Resent-From: d@client.test\r\n"
    )
    reply = await send(strict.port, f"r@{public_domain}", header + BODY)
    assert reply.startswith("250 2.0.0 Ok: queued as "), reply


# --- destinations at RCPT -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "aaaa"),
    [
        (["127.0.0.9"], []),
        (["10.1.2.3", "192.168.4.5"], []),
        (["169.254.0.7"], []),
        (["100.64.12.1"], []),
        ([], ["fd00::25"]),
        ([], ["::1"]),
        (["0.0.0.0"], ["fe80::1"]),
    ],
)
async def test_a_domain_on_non_global_addresses_is_refused_at_rcpt(
    strict: IngestService,
    ingest: IngestService,
    dns_server: DnsServer,
    a: list[str],
    aaaa: list[str],
) -> None:
    domain = f"lan-{uid()}.test"
    dns_server.set_mx(domain, [(10, f"mx1.{domain}"), (20, f"mx2.{domain}")])
    dns_server.set_a(f"mx1.{domain}", a)
    dns_server.set_aaaa(f"mx2.{domain}", aaaa)
    client = await RawClient.connect(strict.port)
    allowed = await RawClient.connect(ingest.port)  # private destinations allowed
    try:
        for session in (client, allowed):
            assert (await session.cmd("EHLO client.test")).startswith("250-")
            assert await session.cmd("MAIL FROM:<s@client.test>") == replies.S250_SENDER_OK
        reply = await client.cmd(f"RCPT TO:<r@{domain}>")
        assert reply == "550 5.4.4 Recipient domain's mail servers have no public address"
        assert await allowed.cmd(f"RCPT TO:<r@{domain}>") == replies.S250_RCPT_OK
        assert await client.cmd("RCPT TO:<r@[127.0.0.1]>") == replies.S554_RELAY_DENIED
    finally:
        await client.close()
        await allowed.close()


async def test_implicit_mx_on_a_private_address_is_refused(
    strict: IngestService, dns_server: DnsServer
) -> None:
    domain = f"implicit-{uid()}.test"
    dns_server.set_a(domain, ["192.168.1.20"])
    client = await RawClient.connect(strict.port)
    try:
        assert (await client.cmd("EHLO client.test")).startswith("250-")
        assert await client.cmd("MAIL FROM:<s@client.test>") == replies.S250_SENDER_OK
        assert await client.cmd(f"RCPT TO:<r@{domain}>") == replies.S550_PRIVATE_DESTINATION
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("setup", "reply"),
    [
        ("mixed", replies.S250_RCPT_OK),  # delivery uses the public host
        ("timeout", replies.S250_RCPT_OK),  # not known in full: delivery resolves it again
        ("no_address", replies.S550_PRIVATE_DESTINATION),  # delivery would refuse it too
    ],
)
async def test_a_domain_with_one_private_host_is_judged_on_all_of_them(
    strict: IngestService, dns_server: DnsServer, setup: str, reply: str
) -> None:
    domain = f"{setup.replace('_', '-')}-{uid()}.test"
    dns_server.set_mx(domain, [(10, f"mx1.{domain}"), (20, f"mx2.{domain}")])
    dns_server.set_a(f"mx1.{domain}", ["10.0.0.1"])
    if setup == "mixed":
        dns_server.set_a(f"mx2.{domain}", ["8.8.4.4"])
    if setup == "timeout":
        dns_server.set_timeout(f"mx2.{domain}")
    client = await RawClient.connect(strict.port)
    try:
        assert (await client.cmd("EHLO client.test")).startswith("250-")
        assert await client.cmd("MAIL FROM:<s@client.test>") == replies.S250_SENDER_OK
        assert await client.cmd(f"RCPT TO:<r@{domain}>") == reply
    finally:
        await client.close()
