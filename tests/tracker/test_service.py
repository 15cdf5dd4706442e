"""`mailsluice tracker` in this process on 127.0.0.1, over real HTTP (aiohttp), with the real
broker: a click follows to its exact target, a changed token gets 404, the pixel is a GIF, and
the events land on mailsluice.events keyed by queue id, machines marked."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from support.loopback import free_port
from support.topic_reader import read_topic

from mailsluice.contracts.events import Event, EventType, decode_event
from mailsluice.contracts.topics import EVENTS_TOPIC
from mailsluice.kafka.admin import ensure_topics, standard_topics
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.metrics.tracker import Tracker
from mailsluice.tracker.app import PIXEL
from mailsluice.tracker.service import TrackerService
from mailsluice.tracking.machines import load_machines
from mailsluice.tracking.settings import TrackingSettings
from mailsluice.tracking.tokens import Mark, TrackingKeys

KEYS = TrackingKeys({"t1": b"t" * 32})
BROWSER = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Version/17.5"
TARGET = "https://shop.example.com/spring?utm_source=mail&x=%E2%82%AC#deals"
# Apple's proxy, by an address of the shipped data file's privacy_proxy networks
APPLE = "17.58.1.2"


@pytest.fixture(scope="module")
async def service(kafka_settings: KafkaSettings) -> AsyncIterator[TrackerService]:
    specs = [s for s in standard_topics(kafka_settings, [], 1 << 20) if s.name == EVENTS_TOPIC]
    await ensure_topics(kafka_settings, specs)
    # the test client is its own trusted proxy, so it can speak for Apple's address
    settings = TrackingSettings(
        listen_host="127.0.0.1", listen_port=0, http_port=0, trusted_proxies="127.0.0.1"
    )
    running = TrackerService(settings, kafka_settings, KEYS, load_machines(), ops=False)
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


@pytest.fixture(scope="module")
async def shop() -> AsyncIterator[str]:
    """A web server standing for the link's target: answers the path and query it got."""

    async def echo(request: web.Request) -> web.Response:
        return web.Response(text=request.path_qs)

    app = web.Application()
    app.router.add_get("/{tail:.*}", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def mark(sent: float) -> Mark:
    queue_id = f"Q{uuid.uuid4().hex[:12]}"
    return Mark("open", queue_id, "ann@example.org", int(sent), "bulk", "gmail.com", "acme", "sp")


async def events_of(kafka_settings: KafkaSettings, queue_id: str, expect: int) -> list[Event]:
    records = await read_topic(
        kafka_settings, EVENTS_TOPIC, lambda r: r.key == queue_id.encode(), expect=expect
    )
    return [decode_event(r.value) for r in records]


async def test_click_follows_to_the_exact_target_and_open_is_a_gif(
    service: TrackerService, kafka_settings: KafkaSettings, shop: str
) -> None:
    m = mark(time.time() - 3600)
    base = f"http://127.0.0.1:{service.port}"
    target = f"{shop}{TARGET.removeprefix('https://shop.example.com')}"
    async with aiohttp.ClientSession(headers={"User-Agent": BROWSER}) as http:
        click = KEYS.click_url(base, m, 2, target)
        async with http.get(click, allow_redirects=False) as resp:
            assert resp.status == 302
            assert resp.headers["Location"] == target
        async with http.get(click) as resp:  # followed: the shop gets exactly what was linked
            assert resp.status == 200 and str(resp.url) == target.split("#", maxsplit=1)[0]
            assert await resp.text() == "/spring?utm_source=mail&x=%E2%82%AC"
        async with http.get(KEYS.open_url(base, m)) as resp:
            assert resp.status == 200 and resp.content_type == "image/gif"
            assert await resp.read() == PIXEL
            assert "no-store" in resp.headers["Cache-Control"]
    events = await events_of(kafka_settings, m.queue_id, expect=3)
    assert sorted(e.type for e in events) == [EventType.CLICK, EventType.CLICK, EventType.OPEN]
    by_type = {e.type: e for e in events}
    clicked = by_type[EventType.CLICK]
    assert (clicked.link, clicked.link_index, clicked.agent, clicked.remote) == (
        target,
        2,
        BROWSER,
        "127.0.0.1",
    )
    assert (clicked.queue_id, clicked.pool, clicked.routing_key) == (
        m.queue_id,
        "bulk",
        "gmail.com",
    )
    assert (clicked.tenant, clicked.campaign, clicked.recipient) == (
        "acme",
        "sp",
        "ann@example.org",
    )
    assert clicked.sent_at == float(m.sent) and clicked.machine == ""
    assert by_type[EventType.OPEN].machine == "" and by_type[EventType.OPEN].link_index == -1


async def test_a_changed_token_is_404_and_records_nothing(
    service: TrackerService, kafka_settings: KafkaSettings
) -> None:
    m = mark(time.time() - 3600)
    url = KEYS.click_url(f"http://127.0.0.1:{service.port}", m, 0, TARGET)
    changed = url[:-5] + ("AAAAA" if not url.endswith("AAAAA") else "BBBBB")
    async with aiohttp.ClientSession() as http, http.get(changed, allow_redirects=False) as resp:
        assert resp.status == 404
        assert resp.content_type == "application/problem+json"
        assert (await resp.json(content_type=None))["status"] == 404
    # a genuine click after it is the only event of its message
    async with aiohttp.ClientSession() as http, http.get(url, allow_redirects=False) as resp:
        assert resp.status == 302
    (event,) = await events_of(kafka_settings, m.queue_id, expect=1)
    assert event.type == EventType.CLICK


async def test_apple_proxy_open_and_scanner_clicks_are_marked_machine(
    service: TrackerService, kafka_settings: KafkaSettings
) -> None:
    late, fresh = mark(time.time() - 3600), mark(time.time())
    base = f"http://127.0.0.1:{service.port}"
    async with aiohttp.ClientSession() as http:
        apple = {"User-Agent": BROWSER, "X-Forwarded-For": APPLE}
        async with http.get(KEYS.open_url(base, late), headers=apple) as resp:
            assert resp.status == 200
        scanner = {"User-Agent": "Mozilla/5.0 (compatible; Barracuda Sentinel URL check)"}
        url = KEYS.click_url(base, late, 0, TARGET)
        async with http.get(url, headers=scanner, allow_redirects=False) as resp:
            assert resp.status == 302  # a scanner gets the target too: it must see the page
        # a browser's click within seconds of sending: a scanner on delivery
        url = KEYS.click_url(base, fresh, 0, TARGET)
        async with http.get(url, headers={"User-Agent": BROWSER}, allow_redirects=False) as resp:
            assert resp.status == 302
    late_events = await events_of(kafka_settings, late.queue_id, expect=2)
    assert sorted((e.type, e.machine, e.remote) for e in late_events) == [
        (EventType.CLICK, "scanner", "127.0.0.1"),
        (EventType.OPEN, "privacy_proxy", APPLE),
    ]
    (soon,) = await events_of(kafka_settings, fresh.queue_id, expect=1)
    assert (soon.type, soon.machine) == (EventType.CLICK, "too_soon")


async def test_without_kafka_clicks_still_redirect_at_once_and_overflow_is_counted() -> None:
    settings = TrackingSettings(listen_host="127.0.0.1", listen_port=0, http_port=0, event_buffer=2)
    nowhere = KafkaSettings(bootstrap=f"127.0.0.1:{free_port()}")
    running = TrackerService(settings, nowhere, KEYS, load_machines(), ops=False, stop_grace_s=0.2)
    dropped = Tracker.DROPPED._value.get()
    await running.start()
    try:
        m = mark(time.time() - 3600)
        url = KEYS.click_url(f"http://127.0.0.1:{running.port}", m, 0, TARGET)
        async with aiohttp.ClientSession() as http:
            for _ in range(5):
                started = time.monotonic()
                async with http.get(url, allow_redirects=False) as resp:
                    assert resp.status == 302 and resp.headers["Location"] == TARGET
                assert time.monotonic() - started < 1.0  # never waits for Kafka
        assert running.ready() == (True, "serving (2 events pending)")
        assert Tracker.DROPPED._value.get() == dropped + 3
    finally:
        await running.stop()
    # the two held were never acknowledged: lost at the stop, and counted
    assert Tracker.DROPPED._value.get() == dropped + 5
