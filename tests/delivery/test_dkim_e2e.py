"""DKIM through the real pipeline: a delivery worker on the real broker signs as it sends to a
real SMTP server, and OpenDKIM verifies the bytes that server received."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from support.delivery_worker import (
    EventLog,
    Running,
    enqueue,
    envelope,
    new_pool,
    setup_pool,
)
from support.opendkim import opendkim_results

from mailsluice.contracts.events import EventType
from mailsluice.delivery.service import DeliveryService
from mailsluice.delivery.transport.client import Transport
from mailsluice.delivery.transport.settings import OutboundSettings
from mailsluice.delivery.transport.signing import DkimSigner
from mailsluice.delivery.worker.settings import DeliverySettings
from mailsluice.dkim.keys import generate
from mailsluice.dkim.plan import SigningPlan
from mailsluice.resolver import DnsSettings, make_resolver

KEYS = [generate("origin.example", "r1", "rsa"), generate("origin.example", "e1", "ed25519")]


def body(env: Any) -> bytes:
    """Bare LF, a dot line and an 8-bit line, as a submitting client may hand them in."""
    return (
        b"From: News <news@origin.example>\nTo: %s\nSubject: Issue %s\n"
        b"MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n\n"
        b".a dot line\nGr\xc3\xbc\xc3\x9fe\n" % (env.recipients[0].encode(), env.queue_id.encode())
    )


async def test_a_worker_signs_what_it_delivers_and_opendkim_verifies_it(
    kafka: Any, fake_mx: Any, dns_nameserver: str, tmp_path: Path
) -> None:
    ks = kafka.settings()
    pool = new_pool()
    await setup_pool(ks, pool)
    mx = fake_mx()
    outbound = OutboundSettings(static_routes=f"*={mx.address}", connect_timeout_s=5)
    signer = DkimSigner(SigningPlan(KEYS))
    transport = Transport(
        outbound, make_resolver(DnsSettings(nameservers=dns_nameserver)), signer=signer
    )
    service = DeliveryService(DeliverySettings(pool=pool, commit_interval_s=0.2), ks, transport)
    envs = [envelope(pool, n, (f"r{n}@dest.example",)) for n in range(3)]
    try:
        async with EventLog(ks, pool) as events, Running(service):
            await enqueue(ks, list(envs), body)
            await events.expect_final({(e.queue_id, e.recipients[0]) for e in envs})
    finally:
        await transport.close()
    assert {e.type for e in events.events if e.queue_id in {x.queue_id for x in envs}} >= {
        EventType.DELIVERY
    }
    received = await mx.messages_arrived(3)
    for i, msg in enumerate(received):
        assert opendkim_results(msg.data, KEYS, tmp_path / str(i)) == {"r1": "pass", "e1": "pass"}
