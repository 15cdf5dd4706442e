"""The real pipeline of an unsubscribe: a one-click POST to the service (real HTTP), its event
on the real broker, `mailsluice streams` (a subprocess) writing the suppression record in the
token's scope to mailsluice.suppressions, and a delivery worker that then no longer sends that
list's mail to the recipient."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from streams.test_service import StreamsProcess, streams  # noqa: F401 (the fixture)
from support.delivery_worker import EventLog, Running, enqueue, envelope, new_pool, setup_pool
from support.topic_reader import reading

from mailsluice.consent.settings import UnsubscribeSettings
from mailsluice.consent.tokens import KeyRing, claim_for
from mailsluice.contracts.events import EventType
from mailsluice.contracts.suppressions import (
    Scope,
    decode_suppression,
    parse_key,
    scopes_for,
    suppression_key,
)
from mailsluice.contracts.topics import SUPPRESSIONS_TOPIC
from mailsluice.delivery.service import DeliveryService
from mailsluice.delivery.transport.client import Transport
from mailsluice.delivery.transport.settings import OutboundSettings
from mailsluice.delivery.worker.settings import DeliverySettings
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.resolver import DnsSettings, make_resolver
from mailsluice.unsubscribe.service import UnsubscribeService

KEYS = KeyRing({"k1": b"p" * 32})


@pytest.fixture(scope="module")
async def service(
    streams: StreamsProcess,  # noqa: F811
    kafka_settings: KafkaSettings,
) -> AsyncIterator[UnsubscribeService]:
    settings = UnsubscribeSettings(listen_host="127.0.0.1", listen_port=0)
    running = UnsubscribeService(settings, kafka_settings, KEYS, ops=False)
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


async def test_a_one_click_post_becomes_a_suppression_in_the_tokens_scope(
    service: UnsubscribeService,
    streams: StreamsProcess,  # noqa: F811
    kafka_settings: KafkaSettings,
) -> None:
    rcpt = f"Reader-{uuid.uuid4().hex[:8]}@example.test"
    claim = claim_for(
        rcpt, tenant="acme", list_id="news", sender="n@acme.example", preference="list"
    )
    token = KEYS.mint(claim)
    async with aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{service.port}/u/{token}"
        async with http.post(url, data={"List-Unsubscribe": "One-Click"}) as resp:
            assert resp.status == 200
    scope = Scope.parse("list:acme/news")
    key = suppression_key(rcpt, scope)

    async with reading(kafka_settings, SUPPRESSIONS_TOPIC, lambda r: r.key == key) as reader:
        try:
            (record,) = await reader.at_least(1, within=90, what="the unsubscribe suppression")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{streams.tail()}") from None
    entry = decode_suppression(record.value)
    assert (entry.reason, entry.scope, entry.source) == ("unsubscribe", "list:acme/news", "streams")
    assert parse_key(record.key.decode()) == (scope, rcpt.lower())


async def test_a_click_stops_the_next_queued_message_to_that_recipient(
    service: UnsubscribeService,
    streams: StreamsProcess,  # noqa: F811
    kafka: Any,
    fake_mx: Any,
    dns_nameserver: str,
) -> None:
    """The whole loop: delivered once, one click, and the next message of the same list to the
    same recipient is not sent (a `suppressed` event instead), while another list still is."""
    ks = kafka.settings(queue_partitions=1)
    pool = new_pool()
    await setup_pool(ks, pool)
    mx = fake_mx()
    outbound = OutboundSettings(static_routes=f"*={mx.address}", connect_timeout_s=5)
    transport = Transport(outbound, make_resolver(DnsSettings(nameservers=dns_nameserver)))
    worker = DeliveryService(DeliverySettings(pool=pool, commit_interval_s=0.2), ks, transport)
    rcpt = f"reader-{uuid.uuid4().hex[:8]}@example.test"
    news = {"tenant": "acme", "list_id": "news", "sender": "n@acme.example"}
    claim = claim_for(
        rcpt, tenant="acme", list_id="news", sender="n@acme.example", preference="list"
    )
    scopes = scopes_for(tenant="acme", sender="n@acme.example", list_id="news")
    try:
        async with EventLog(ks, pool) as events, Running(worker):
            await enqueue(ks, [envelope(pool, 0, (rcpt,), **news)])
            await events.expect(EventType.DELIVERY, 1)
            async with aiohttp.ClientSession() as http:
                url = f"http://127.0.0.1:{service.port}/u/{KEYS.mint(claim)}"
                async with http.post(url, data={"List-Unsubscribe": "One-Click"}) as resp:
                    assert resp.status == 200
            assert worker.suppressions is not None
            await worker.suppressions.wait_for(
                lambda: (
                    worker.suppressions is not None and worker.suppressions.suppressed(rcpt, scopes)
                ),
                timeout=90,
            )
            digest = {**news, "list_id": "digest"}
            await enqueue(
                ks, [envelope(pool, 1, (rcpt,), **news), envelope(pool, 2, (rcpt,), **digest)]
            )
            await events.expect(EventType.SUPPRESSED, 1)
            await events.expect(EventType.DELIVERY, 2)
    finally:
        await transport.close()
    assert [m.rcpt_tos for m in mx.messages] == [(rcpt,), (rcpt,)]  # messages 0 and 2 only
    (event,) = events.of(EventType.SUPPRESSED)
    assert (event.queue_id, event.reason) == (f"{pool}-00001", "list:acme/news")
