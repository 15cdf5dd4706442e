"""A warming pool's first day, the whole way: five of twenty recipients engaged (their records on
mailsluice.engagement, as the stream processors publish them), one campaign of twenty through
`POST /v1/messages` (which grades each message from those records), a delivery worker whose
pool may send five today, and Postfix's smtp-sink. The five that reach the sink are the
engaged ones; the others wait in the warm pool's queue."""

from __future__ import annotations

import re
import time
from typing import Any

import aiohttp
import pytest
from support.api import auth, running
from support.delivery_worker import (
    EventLog,
    Running,
    committed_to_end,
    new_pool,
    service_for,
    setup_pool,
)
from support.eventually import eventually
from support.shaping import warmup_overrides
from support.topic_reader import read_topic

from mailsluice.contracts.engagement import (
    ACTIVE,
    Engagement,
    encode_engagement,
    engagement_key,
)
from mailsluice.contracts.envelope import envelope_from_headers
from mailsluice.contracts.events import EventType
from mailsluice.contracts.topics import ENGAGEMENT_TOPIC, engagement_topic_specs, queue_topic
from mailsluice.delivery.shaping.runtime import ShapingRuntime
from mailsluice.delivery.shaping.settings import ShapingSettings
from mailsluice.delivery.transport.client import Transport
from mailsluice.delivery.transport.settings import OutboundSettings
from mailsluice.kafka.admin import ensure_topics
from mailsluice.kafka.clients import make_producer
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.resolver import DnsSettings, make_resolver

pytestmark = pytest.mark.kafka

CAP = 5
RCPTS = [f"r{n}@warm.example" for n in range(20)]
ENGAGED = {RCPTS[n] for n in (3, 8, 11, 15, 19)}  # spread through the campaign


async def publish_engagement(ks: KafkaSettings, now: float) -> None:
    """acme's records of the twenty: five opened yesterday, the others were sent to and never
    opened (as the stream processors' hygiene agent publishes them)."""
    await ensure_topics(ks, engagement_topic_specs(ks.min_insync_replicas))
    producer = make_producer(ks, max_message_size=1 << 20, client_id="test-engagement")
    await producer.start()
    try:
        for address in RCPTS:
            engaged = address in ENGAGED
            record = Engagement(
                tenant="acme",
                address=address,
                first_delivered=now - 30 * 86400,
                last_delivered=now - 86400,
                last_engaged=now - 86400 if engaged else 0.0,
                deliveries=1 if engaged else 3,
            )
            key = engagement_key("acme", address)
            await producer.send_and_wait(ENGAGEMENT_TOPIC, encode_engagement(record), key=key)
    finally:
        await producer.stop()


def rcpt_of(dump: bytes) -> str:
    (found,) = re.findall(rb"^X-Rcpt-Args: <([^>]+)>", dump, re.M)
    return str(found.decode())


async def test_the_first_days_cap_reaches_the_sink_with_the_engaged_recipients(
    kafka: Any, smtp_sink: Any, dns_nameserver: str
) -> None:
    ks = kafka.settings()
    pool, warm = new_pool(), new_pool()
    await setup_pool(ks, pool)
    await setup_pool(ks, warm)
    await publish_engagement(ks, time.time())
    sink = smtp_sink(dump=True)
    outbound = OutboundSettings(static_routes=f"*={sink.address}", connect_timeout_s=5)
    transport = Transport(outbound, make_resolver(DnsSettings(nameservers=dns_nameserver)))
    runtime = ShapingRuntime(ShapingSettings(pool_overrides=warmup_overrides(warm, CAP)), ks, pool)
    worker = service_for(ks, pool, transport, runtime.shaper, mover=False)
    body = {
        "from": {"email": "news@acme.test"},
        "subject": "Hello",
        "text": "Hello.",
        "campaign": "warm-start",
        "recipients": [{"to": {"email": r}} for r in RCPTS],
    }
    try:
        async with EventLog(ks, pool) as events, Running(worker), running(ks, pool) as api:
            async with (
                aiohttp.ClientSession() as http,
                http.post(
                    f"http://127.0.0.1:{api.port}/v1/messages", json=body, headers=auth()
                ) as resp,
            ):
                assert resp.status == 202, await resp.text()
            await events.expect(EventType.DELIVERY, CAP)
            await committed_to_end(ks, pool, within=30)
        dumps = await eventually(
            lambda: len(sink.dumped_messages()) >= CAP and sink.dumped_messages(),
            within=30,
            what="the day's cap at smtp-sink",
        )
    finally:
        await transport.close()
    assert {rcpt_of(d) for d in dumps} == ENGAGED
    waiting = await read_topic(ks, queue_topic(warm), lambda _r: True, expect=len(RCPTS) - CAP)
    envs = [envelope_from_headers(r.headers) for r in waiting]
    assert {e.recipients[0] for e in envs} == set(RCPTS) - ENGAGED
    assert max(e.grade for e in envs) < ACTIVE  # graded by the API, kept on the way
