"""The courier against a real receiver on 127.0.0.1 that hangs (no Kafka: the records it
writes are captured): a failing endpoint gets one attempt at a time, its other batches go back
to their delay tier untried, so a hung receiver holds one connection slot, not all of them."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

from aiohttp import web
from support.eventually import eventually

from mailsluice.contracts.topics import webhook_retry_topic
from mailsluice.contracts.webhook_records import PendingBatch, decode_batch_record
from mailsluice.kafka.producers import RenewingProducer
from mailsluice.tenancy.model import parse_tenants
from mailsluice.tenancy.registry import Registry
from mailsluice.webhooks.courier import Courier
from mailsluice.webhooks.http import open_session
from mailsluice.webhooks.schedule import RetrySchedule
from mailsluice.webhooks.ssrf import parse_networks
from mailsluice.webhooks.status import EndpointBook

SECRET = "whsec_" + base64.b64encode(b"h" * 32).decode()
LOOPBACK = parse_networks("127.0.0.0/8")


class Captured:
    """Stands in for the producer: what would be written."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None]] = []

    async def send_all(self, sends: Sequence[tuple[str, bytes | None, Any, Any]]) -> None:
        self.sent += [(topic, value) for topic, value, _key, _headers in sends]


@contextlib.asynccontextmanager
async def hanging_receiver(release: asyncio.Event, arrived: list[float]) -> AsyncIterator[str]:
    """A receiver whose every POST waits for `release` (then 503); yields its URL."""

    async def hang(_: web.Request) -> web.Response:
        arrived.append(asyncio.get_running_loop().time())
        await release.wait()
        return web.Response(status=503)

    app = web.Application()
    app.router.add_post("/hook", hang)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/hook"
    finally:
        release.set()
        await runner.cleanup()


def courier_for(url: str, book: EndpointBook, captured: Captured, session: Any) -> Courier:
    hook = {"id": "main", "url": url, "events": ["delivered"], "secrets": [SECRET]}
    tenants = {"acme": {"pools": ["p"], "domains": ["a.test"], "webhooks": [hook]}}
    return Courier(
        Registry(tenants=parse_tenants(tenants)),
        book,
        cast(RenewingProducer, captured),
        session,
        schedule=RetrySchedule((60,), 3600, jitter=0),
        allowed=LOOPBACK,
        timeout_s=30,
        max_in_flight=16,
        per_endpoint=4,
    )


async def test_a_failing_endpoint_gets_one_probe_and_the_rest_wait_untried() -> None:
    release, arrived = asyncio.Event(), []
    book = EndpointBook(pause_after_s=3600)
    book.failed("acme", "main", "HTTP 503", now=1.0)  # failing already
    captured = Captured()
    batches = [
        PendingBatch(id=f"msg_{i}", tenant="acme", endpoint="main", events=1, body="{}")
        for i in range(6)
    ]
    async with hanging_receiver(release, arrived) as url, open_session(LOOPBACK, 16) as session:
        courier = courier_for(url, book, captured, session)
        tasks = [asyncio.create_task(courier.attempt(b)) for b in batches]
        await eventually(lambda: courier.untried == 5, within=10, what="five batches untried")
        assert len(arrived) == 1  # the probe is still hanging: no second POST was made
        release.set()
        await asyncio.gather(*tasks)
    assert len(arrived) == 1
    tiers = {topic for topic, _ in captured.sent if "retry" in topic}
    assert tiers == {webhook_retry_topic("30s")}
    records = [decode_batch_record(v) for t, v in captured.sent if v and "retry" in t]
    assert len(records) == 6 and all(r.attempts == 1 for r in records)
    assert len([r for r in records if "not tried" in r.last_error]) == 5
