"""The whole way: POST /v1/messages with 1,000 recipients and their data, a delivery worker on
the real broker, Postfix's smtp-sink as every destination. Each recipient's copy arrives with
its own rendering, once."""

from __future__ import annotations

import email
import re
from email import policy
from typing import Any

import aiohttp
from support.api import auth, running
from support.delivery_worker import EventLog, Running, new_pool, service_for, setup_pool
from support.eventually import eventually

from mailsluice.delivery.transport.client import Transport
from mailsluice.delivery.transport.settings import OutboundSettings
from mailsluice.resolver import DnsSettings, make_resolver

COUNT = 1000
DOMAINS = 10  # ten destinations, a hundred each: within the default shaping rates


def rcpt_of(dump: bytes) -> str:
    (found,) = re.findall(rb"^X-Rcpt-Args: <([^>]+)>", dump, re.M)
    return str(found.decode())


async def test_a_thousand_recipients_reach_the_sink_each_with_their_own_rendering(
    kafka: Any, smtp_sink: Any, dns_nameserver: str
) -> None:
    ks = kafka.settings()
    pool = new_pool()
    await setup_pool(ks, pool)
    sink = smtp_sink(dump=True)
    outbound = OutboundSettings(static_routes=f"*={sink.address}", connect_timeout_s=5)
    transport = Transport(outbound, make_resolver(DnsSettings(nameservers=dns_nameserver)))
    worker = service_for(ks, pool, transport, mover=False)
    rcpts = [f"p{i}@d{i % DOMAINS}.example" for i in range(COUNT)]
    body = {
        "from": {"email": "news@acme.test"},
        "subject": "For {{ name }} #{{ n }}",
        "text": "Hello {{ name }}, number {{ n }}.",
        "recipients": [
            {"to": {"email": r}, "data": {"name": f"P{i}", "n": i}} for i, r in enumerate(rcpts)
        ],
    }
    try:
        async with EventLog(ks, pool) as events, Running(worker), running(ks, pool) as api:
            url = f"http://127.0.0.1:{api.port}/v1/messages"
            async with (
                aiohttp.ClientSession() as http,
                http.post(url, json=body, headers=auth()) as resp,
            ):
                assert resp.status == 202, await resp.text()
                answer = await resp.json()
            ids = {(r["id"], r["to"]) for r in answer["results"]}
            await events.expect_final(ids, within=120)
        dumps = await eventually(
            lambda: len(sink.dumped_messages()) >= COUNT and sink.dumped_messages(),
            within=30,
            what=f"{COUNT} messages in smtp-sink's dump",
        )
    finally:
        await transport.close()
    assert len(dumps) == COUNT
    by_rcpt = {rcpt_of(d): d for d in dumps}
    assert sorted(by_rcpt) == sorted(rcpts)  # each once
    for i, rcpt in enumerate(rcpts):
        msg = email.message_from_bytes(by_rcpt[rcpt], policy=policy.default)
        assert msg["Subject"] == f"For P{i} #{i}"
        assert msg.get_content().strip() == f"Hello P{i}, number {i}."
