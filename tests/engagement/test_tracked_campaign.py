"""A tracked campaign the whole way: `POST /v1/messages` with tracking, a delivery worker on the
real broker sending to Postfix's smtp-sink, the tracker service, and `mailsluice streams`. A real
HTTP client follows the pixel and links found in the messages captured at the sink, as mail
clients and scanners would: the opens and clicks land on mailsluice.events (an Apple-proxy open
and a scanner's click marked machine) and in the campaign's stats with the right rates."""

from __future__ import annotations

import email
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from support.api import auth, running
from support.delivery_worker import EventLog, Running, new_pool, service_for, setup_pool
from support.eventually import eventually
from support.streams_process import StreamsProcess, prepare
from support.streams_process import running as streams_running
from support.topic_reader import read_topic

from mailsluice.consent.settings import UnsubscribeSettings
from mailsluice.consent.tokens import KeyRing
from mailsluice.contracts.events import Event, EventType, decode_event
from mailsluice.contracts.topics import EVENTS_TOPIC
from mailsluice.delivery.transport.client import Transport
from mailsluice.delivery.transport.settings import OutboundSettings
from mailsluice.delivery.worker.finishing import Setup, wrap
from mailsluice.delivery.worker.tracking import Tracking
from mailsluice.resolver import DnsSettings, make_resolver
from mailsluice.tracker.service import TrackerService
from mailsluice.tracking.machines import load_machines
from mailsluice.tracking.settings import TrackingSettings

pytestmark = pytest.mark.kafka

SECRET = "t1:" + "t" * 32
BROWSER = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Version/17.5"
SCANNER = "Barracuda Sentinel (EE)"
APPLE = "17.58.1.2"  # in the shipped data file's privacy-proxy networks
RCPTS = ("ann@a.example", "bob@b.example", "cy@c.example", "dee@d.example")
PUBLISH_OFTEN = {"MAILSLUICE_STREAMS_CAMPAIGN_PUBLISH_S": "0.2"}
LINK = re.compile(r'(?:href|src)="(http://127\.0\.0\.1:\d+/([oc])/[A-Za-z0-9_-]+)"')


def rcpt_of(dump: bytes) -> str:
    (found,) = re.findall(rb"^X-Rcpt-Args: <([^>]+)>", dump, re.M)
    return str(found.decode())


def tracked_urls(dump: bytes) -> dict[str, list[str]]:
    """The pixel ("o") and click ("c") URLs in a captured message's HTML part."""
    msg = email.message_from_bytes(dump, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    html = msg.get_body(("html",))
    text = msg.get_body(("plain",))
    assert html is not None and text is not None
    assert not re.search(r"/[oc]/[A-Za-z0-9_-]{20}", text.get_content())  # text keeps its links
    found: dict[str, list[str]] = {"o": [], "c": []}
    for url, kind in LINK.findall(html.get_content()):
        found[kind].append(url)
    return found


@pytest.fixture
async def shop() -> AsyncIterator[str]:
    """The sender's web site the links point at: it answers the path it was sent to."""

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=f"page {request.path}")

    app = web.Application()
    app.router.add_get("/{tail:.*}", page)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def tracker(kafka: Any) -> AsyncIterator[TrackerService]:
    # the test client stands for the proxy in front of the tracker (so it can speak for Apple's
    # address); a click seconds after delivery is a person here, scanners are known by agent
    settings = TrackingSettings(
        listen_host="127.0.0.1",
        listen_port=0,
        http_port=0,
        trusted_proxies="127.0.0.1",
        too_soon_s=0,
        keys=SECRET,
    )
    service = TrackerService(
        settings, kafka.settings(), settings.key_ring(), load_machines(), ops=False
    )
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


@pytest.fixture
def streams(kafka: Any, tmp_path: Path) -> Iterator[StreamsProcess]:
    app_id = f"test-tracked-{uuid.uuid4().hex[:8]}"
    prepare(kafka.settings(), app_id)
    with streams_running(kafka.bootstrap, app_id, tmp_path, **PUBLISH_OFTEN) as process:
        yield process


@pytest.fixture
def sink(smtp_sink: Any, dns_nameserver: str) -> Iterator[tuple[Any, Transport]]:
    """smtp-sink (dumping what it gets) as every destination, and the transport to it."""
    dumping = smtp_sink(dump=True)
    outbound = OutboundSettings(static_routes=f"*={dumping.address}", connect_timeout_s=5)
    yield dumping, Transport(outbound, make_resolver(DnsSettings(nameservers=dns_nameserver)))


def finishing(tracker_url: str) -> Setup:
    tracking = TrackingSettings(url=tracker_url, keys=SECRET, default="off")
    unsubscribe = UnsubscribeSettings()
    return Setup(unsubscribe, KeyRing({}), Tracking(tracking, tracking.key_ring(), ""))


async def follow(http: aiohttp.ClientSession, url: str, **headers: str) -> tuple[int, str]:
    async with http.get(url, headers=headers) as resp:
        return resp.status, resp.content_type


async def engagement_events(ks: Any, ids: set[str]) -> list[Event]:
    def engagement(record: Any) -> bool:
        if record.key is None or record.key.decode() not in ids:
            return False
        return decode_event(record.value).type in (EventType.OPEN, EventType.CLICK)

    records = await read_topic(ks, EVENTS_TOPIC, engagement, expect=4)
    return [decode_event(r.value) for r in records]


async def test_opens_and_clicks_followed_from_the_sink_count_in_the_campaign(
    kafka: Any,
    sink: tuple[Any, Transport],
    tracker: TrackerService,
    shop: str,
    streams: StreamsProcess,
) -> None:
    ks = kafka.settings()
    pool = new_pool()
    await setup_pool(ks, pool)
    dumping, base = sink
    transport = wrap(base, setup=finishing(f"http://127.0.0.1:{tracker.port}"))
    worker = service_for(ks, pool, transport, mover=False)
    campaign = f"launch-{uuid.uuid4().hex[:6]}"
    try:
        async with EventLog(ks, pool) as events, Running(worker), running(ks, pool) as api:
            api_url = f"http://127.0.0.1:{api.port}"
            ids = await send_campaign(api_url, campaign, shop)
            await events.expect_final(ids, within=60)
            dumps = await eventually(
                lambda: len(dumping.dumped_messages()) >= len(RCPTS) and dumping.dumped_messages(),
                within=30,
                what="the campaign's messages in smtp-sink's dump",
            )
            urls = {rcpt_of(d): tracked_urls(d) for d in dumps}
            assert sorted(urls) == sorted(RCPTS)
            assert all(len(u["o"]) == 1 and len(u["c"]) == 2 for u in urls.values())
            await act_as_readers(urls, shop)
            check_events(await engagement_events(ks, {qid for qid, _ in ids}))
            stats = await eventually(
                lambda: campaign_stats(api_url, campaign),
                within=60,
                what="the opens and clicks in the campaign's stats",
            )
    finally:
        await transport.close()
    check_stats(stats)


async def send_campaign(api_url: str, campaign: str, shop: str) -> set[tuple[str, str]]:
    """The campaign's messages, tracked, through the API: (queue id, recipient) of each."""
    body = {
        "from": {"email": "news@acme.test"},
        "subject": "Spring",
        "text": f"See {shop}/spring and {shop}/sale",
        "html": f'<p><a href="{shop}/spring">Spring</a> <a href="{shop}/sale">Sale</a></p>',
        "campaign": campaign,
        "tracking": "all",
        "recipients": [{"to": {"email": r}} for r in RCPTS],
    }
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{api_url}/v1/messages", json=body, headers=auth()) as resp,
    ):
        assert resp.status == 202, await resp.text()
        answer = await resp.json()
    return {(r["id"], r["to"]) for r in answer["results"]}


async def act_as_readers(urls: dict[str, dict[str, list[str]]], shop: str) -> None:
    """ann opens, bob's Apple proxy loads the pixel, cy clicks the first link (followed to the
    shop), and dee's scanner clicks the second."""
    async with aiohttp.ClientSession() as http:
        assert await follow(http, urls["ann@a.example"]["o"][0], **{"User-Agent": BROWSER}) == (
            200,
            "image/gif",
        )
        apple = {"User-Agent": "Mozilla/5.0", "X-Forwarded-For": APPLE}
        assert (await follow(http, urls["bob@b.example"]["o"][0], **apple))[0] == 200
        async with http.get(urls["cy@c.example"]["c"][0], headers={"User-Agent": BROWSER}) as r:
            assert (r.status, str(r.url), await r.text()) == (200, f"{shop}/spring", "page /spring")
        async with http.get(
            urls["dee@d.example"]["c"][1], headers={"User-Agent": SCANNER}, allow_redirects=False
        ) as r:
            assert (r.status, r.headers["Location"]) == (302, f"{shop}/sale")


def check_events(seen: list[Event]) -> None:
    by = {(e.type, e.recipient): e for e in seen}
    assert len(by) == len(seen) == 4, seen
    ann, bob = by[EventType.OPEN, "ann@a.example"], by[EventType.OPEN, "bob@b.example"]
    cy, dee = by[EventType.CLICK, "cy@c.example"], by[EventType.CLICK, "dee@d.example"]
    assert (ann.machine, bob.machine, cy.machine, dee.machine) == (
        "",
        "privacy_proxy",
        "",
        "scanner",
    )
    assert (cy.link_index, dee.link_index) == (0, 1)
    assert cy.link.endswith("/spring") and dee.link.endswith("/sale")
    assert {e.tenant for e in seen} == {"acme"} and all(e.sent_at > 0 for e in seen)


async def campaign_stats(api_url: str, campaign: str) -> dict[str, Any] | None:
    """The campaign's stats once its deliveries and all four readers' doings are counted."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{api_url}/v1/campaigns/{campaign}", headers=auth()) as resp,
    ):
        if resp.status != 200:
            return None
        got: dict[str, Any] = await resp.json()
    counts = got["counts"]
    done = counts["delivered"] == len(RCPTS) and counts["opens"]["all"] >= len(RCPTS)
    return got if done and counts["clicks"]["all"] >= 2 else None


def check_stats(stats: dict[str, Any]) -> None:
    counts = stats["counts"]
    assert counts["delivered"] == 4
    # a click is an open too: cy and dee opened; ann and cy are the people
    assert counts["opens"] == {"all": 4, "human": 2}
    assert counts["clicks"] == {"all": 2, "human": 1}
    assert stats["rates"]["human"] == {
        "open_rate": 0.5,
        "click_rate": 0.25,
        "click_to_open_rate": 0.5,
    }
    assert stats["rates"]["all"] == {"open_rate": 1.0, "click_rate": 0.5, "click_to_open_rate": 0.5}
