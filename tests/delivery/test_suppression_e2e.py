"""Suppression at send time through the real pipeline: real Kafka, the real SMTP transport to a
fake MX, the retry mover. Addresses suppressed (globally, for the message's tenant, for its list)
while their messages sit in the queue and in a retry tier never reach the MX; each gets a
`suppressed` event, no DSN, and the other recipients of the same messages are delivered."""

from __future__ import annotations

import time
from typing import Any

from support.delivery_worker import (
    EventLog,
    Running,
    committed_to_end,
    enqueue,
    envelope,
    new_pool,
    setup_pool,
)
from support.eventually import eventually
from support.mx_script import R450_DEFER
from support.retry_mover import produce_retries

from mailsluice.admin.suppress import RECORD_SIZE
from mailsluice.contracts.events import EventType
from mailsluice.contracts.suppressions import GLOBAL, Scope
from mailsluice.delivery.service import DeliveryService
from mailsluice.delivery.transport.client import Transport
from mailsluice.delivery.transport.settings import OutboundSettings
from mailsluice.delivery.worker.dsn import build_dsn
from mailsluice.delivery.worker.settings import DeliverySettings
from mailsluice.kafka.clients import make_producer
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.resolver import DnsSettings, make_resolver
from mailsluice.suppression.store import add_suppression

ACME = Scope.parse("tenant:acme")
NEWS = Scope.parse("list:acme/news")


async def suppress(ks: KafkaSettings, *entries: tuple[str, Scope]) -> None:
    producer = make_producer(ks, max_message_size=RECORD_SIZE, client_id="test-suppress")
    await producer.start()
    try:
        for address, scope in entries:
            await add_suppression(producer, address, reason="complaint", source="test", scope=scope)
    finally:
        await producer.stop()


async def test_suppressed_while_queued_or_retrying_never_reaches_the_mx(
    kafka: Any, fake_mx: Any, dns_nameserver: str
) -> None:
    ks = kafka.settings(queue_partitions=2)
    pool = new_pool()
    await setup_pool(ks, pool)
    mx = fake_mx()
    deferring = {f"later@{pool}.example"}  # deferred while in this set
    mx.script.rcpt_reply = lambda address: R450_DEFER if address in deferring else None
    outbound = OutboundSettings(static_routes=f"*={mx.address}", connect_timeout_s=5)
    transport = Transport(outbound, make_resolver(DnsSettings(nameservers=dns_nameserver)))
    settings = DeliverySettings(
        pool=pool, commit_interval_s=0.2, retry_base_s=5.0, retry_max_s=5.0, retry_jitter=0.0
    )
    service = DeliveryService(settings, ks, transport, build_dsn=build_dsn)
    acme = {"tenant": "acme", "list_id": "news"}
    queued = [
        envelope(pool, 0, ("gone@b.example", "keep0@b.example"), **acme),
        envelope(pool, 1, ("tenant@c.example", "keep1@c.example"), **acme),
        envelope(pool, 2, ("list@d.example",), **acme),  # every recipient suppressed
        # the same addresses, for another list and another tenant: not suppressed there
        envelope(pool, 3, ("list@d.example",), tenant="acme", list_id="digest"),
        envelope(pool, 4, ("tenant@c.example",), tenant="beta"),
    ]
    # A retry of an earlier attempt, waiting in the 1m delay tier, due now.
    retrying = envelope(
        pool, 5, ("gone@e.example", "keep5@e.example"), attempt=1, not_before=time.time(), **acme
    )
    suppressed = [
        ("gone@b.example", GLOBAL),
        ("gone@e.example", GLOBAL),
        ("tenant@c.example", ACME),
        ("list@d.example", NEWS),
    ]
    try:
        async with EventLog(ks, pool) as events:
            await enqueue(ks, queued)
            await produce_retries(ks, "1m", [retrying])
            await suppress(ks, *suppressed)
            async with Running(service):
                # Live: the first attempt of `later` fails, and it is suppressed while its retry
                # waits in a delay tier; the retry then finds it suppressed.
                live = envelope(pool, 6, (f"later@{pool}.example", "keep6@f.example"), **acme)
                await enqueue(ks, [live])
                await events.expect(EventType.TRANSIENT_FAILURE, 1)
                await suppress(ks, (f"later@{pool}.example", GLOBAL))
                await service.suppressions.wait_for(f"later@{pool}.example", timeout=15)
                deferring.clear()  # from now on the MX would take it
                await events.expect(EventType.SUPPRESSED, 5, within=60)
                await eventually(
                    lambda: len(events.of(EventType.DELIVERY)) >= 6,
                    within=60,
                    what="the other recipients delivered",
                    detail=events.summary,
                )
                await committed_to_end(ks, pool)
    finally:
        await transport.close()
    reached = sorted(r for m in mx.messages for r in m.rcpt_tos)
    assert reached == sorted(
        [
            "keep0@b.example",
            "keep1@c.example",
            "list@d.example",  # message 3: another list
            "tenant@c.example",  # message 4: another tenant
            "keep5@e.example",
            "keep6@f.example",
        ]
    )
    # `later` was tried once (before its suppression), never after.
    assert [r for r, _ in mx.rcpt_replies if r.startswith("later@")] == [f"later@{pool}.example"]
    got = sorted((e.queue_id[-1], e.recipient, e.reason) for e in events.of(EventType.SUPPRESSED))
    assert got == [
        ("0", "gone@b.example", "global"),
        ("1", "tenant@c.example", "tenant:acme"),
        ("2", "list@d.example", "list:acme/news"),
        ("5", "gone@e.example", "global"),
        ("6", f"later@{pool}.example", "global"),
    ]
    assert not events.of(EventType.BOUNCE) and not events.of(EventType.EXPIRATION)
    assert not [m for m in mx.messages if m.mail_from in ("", "<>")]  # no DSN
