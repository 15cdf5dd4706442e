"""`mailsluice unsubscribe` in this process on 127.0.0.1, over real HTTP, with the real broker:
a one-click POST answers 200 once its event is on mailsluice.events; the GET page only asks;
links that are not ours get problem details and produce nothing."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import aiohttp
import pytest
from support.eventually import eventually
from support.loopback import free_port
from support.topic_reader import read_topic

from mailsluice.consent.settings import UnsubscribeSettings
from mailsluice.consent.tokens import Claim, KeyRing
from mailsluice.contracts.events import Event, EventType, decode_event
from mailsluice.contracts.topics import EVENTS_TOPIC
from mailsluice.kafka.admin import ensure_topics, standard_topics
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.unsubscribe.service import UnsubscribeService

OLD, NEW = b"o" * 32, b"n" * 32
KEYS = KeyRing({"k1": OLD, "k2": NEW}, "k2")
ONE_CLICK = {"List-Unsubscribe": "One-Click"}


@pytest.fixture(scope="module")
async def service(kafka_settings: KafkaSettings) -> AsyncIterator[UnsubscribeService]:
    specs = [s for s in standard_topics(kafka_settings, [], 1 << 20) if s.name == EVENTS_TOPIC]
    await ensure_topics(kafka_settings, specs)
    settings = UnsubscribeSettings(listen_host="127.0.0.1", listen_port=0, http_port=0)
    running = UnsubscribeService(settings, kafka_settings, KEYS, ops=False)
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


def address() -> str:
    return f"u-{uuid.uuid4().hex[:10]}@example.test"


async def unsubscribe_events(kafka_settings: KafkaSettings, rcpt: str, expect: int) -> list[Event]:
    records = await read_topic(
        kafka_settings,
        EVENTS_TOPIC,
        lambda r: decode_event(r.value).recipient == rcpt,
        expect=expect,
    )
    return [decode_event(r.value) for r in records]


async def test_one_click_post_answers_once_the_event_is_in_kafka(
    service: UnsubscribeService, kafka_settings: KafkaSettings
) -> None:
    rcpt = address()
    token = KEYS.mint(Claim(rcpt, "list:acme/news", "acme", "news"))
    url = f"http://127.0.0.1:{service.port}/u/{token}"
    async with aiohttp.ClientSession() as http:
        started = time.monotonic()
        async with http.post(url, data=ONE_CLICK) as resp:  # form-encoded, no cookie
            assert resp.status == 200, await resp.text()
            assert "Unsubscribed" in await resp.text()
        took = time.monotonic() - started
    # answered after the acknowledgement: the event is there when the answer is
    (event,) = await unsubscribe_events(kafka_settings, rcpt, expect=0)
    assert (event.type, event.scope, event.reason) == (
        EventType.UNSUBSCRIBE,
        "list:acme/news",
        "one-click",
    )
    assert took < 2.0, took


async def test_multipart_one_click_and_a_token_of_the_previous_key_work(
    service: UnsubscribeService, kafka_settings: KafkaSettings
) -> None:
    rcpt = address()
    token = KeyRing({"k1": OLD}).mint(Claim(rcpt, "tenant:acme", "acme"))
    form = aiohttp.FormData(ONE_CLICK)
    form.add_field("x", b"multipart", filename="x")  # forces multipart/form-data
    url = f"http://127.0.0.1:{service.port}/u/{token}"
    async with aiohttp.ClientSession() as http, http.post(url, data=form) as resp:
        assert resp.status == 200, await resp.text()
    (event,) = await unsubscribe_events(kafka_settings, rcpt, expect=0)
    assert event.scope == "tenant:acme"


async def test_get_shows_a_form_that_posts_and_unsubscribes_nobody(
    service: UnsubscribeService, kafka_settings: KafkaSettings
) -> None:
    rcpt = address()
    token = KEYS.mint(Claim(rcpt, "global"))
    async with aiohttp.ClientSession() as http:
        for _ in range(3):  # a link scanner, a preview, the user
            async with http.get(f"http://127.0.0.1:{service.port}/u/{token}") as resp:
                assert resp.status == 200
                assert resp.headers["Cache-Control"] == "no-store"
                page = await resp.text()
    assert f'<form method="post" action="/u/{token}">' in page
    assert 'name="List-Unsubscribe" value="One-Click"' in page
    assert rcpt in page
    assert await unsubscribe_events(kafka_settings, rcpt, expect=0) == []


async def test_links_that_are_not_ours_get_problem_details_and_produce_nothing(
    service: UnsubscribeService, kafka_settings: KafkaSettings
) -> None:
    rcpt = address()
    good = KEYS.mint(Claim(rcpt, "global"))
    forged = KeyRing({"k2": b"x" * 32}).mint(Claim(rcpt, "global"))
    retired = KeyRing({"k0": b"r" * 32}).mint(Claim(rcpt, "global"))
    cases = [
        ("post", "garbage!", ONE_CLICK, 400),
        ("get", "a" * 16, None, 400),  # base32, but too short to hold a claim
        ("post", forged, ONE_CLICK, 404),
        ("get", retired, None, 404),
        ("post", good, {"List-Unsubscribe": "Two-Clicks"}, 400),
        ("post", good, None, 400),
    ]
    async with aiohttp.ClientSession() as http:
        for method, token, body, status in cases:
            url = f"http://127.0.0.1:{service.port}/u/{token}"
            async with http.request(method, url, data=body) as resp:
                assert resp.status == status, (method, token, await resp.text())
                assert resp.content_type == "application/problem+json"
                problem = await resp.json(content_type=None)
                assert problem["status"] == status and problem["title"]
    assert await unsubscribe_events(kafka_settings, rcpt, expect=0) == []


async def test_without_kafka_not_ready_and_a_post_gets_503_never_200() -> None:
    settings = UnsubscribeSettings(
        listen_host="127.0.0.1", listen_port=0, http_port=0, publish_timeout_s=0.5
    )
    nowhere = KafkaSettings(bootstrap=f"127.0.0.1:{free_port()}")
    running = UnsubscribeService(settings, nowhere, KEYS, ops=False)
    await running.start()
    try:
        await eventually(
            lambda: running.ready()[1].startswith("kafka:"), within=10, what="kafka not ready"
        )
        token = KEYS.mint(Claim(address(), "global"))
        url = f"http://127.0.0.1:{running.port}/u/{token}"
        async with aiohttp.ClientSession() as http, http.post(url, data=ONE_CLICK) as resp:
            assert resp.status == 503
            assert resp.headers["Retry-After"] == "60"
            assert resp.content_type == "application/problem+json"
        assert not running.ready()[0]
    finally:
        await running.stop()
