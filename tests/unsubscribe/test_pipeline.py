"""The real pipeline of an unsubscribe: a one-click POST to the service (real HTTP), its event
on the real broker, `mailsluice streams` (a subprocess) writing the suppression record in the
token's scope to mailsluice.suppressions."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import aiohttp
import pytest
from streams.test_service import StreamsProcess, streams  # noqa: F401 (the fixture)
from support.topic_reader import reading

from mailsluice.consent.settings import UnsubscribeSettings
from mailsluice.consent.tokens import KeyRing, claim_for
from mailsluice.contracts.suppressions import (
    Scope,
    decode_suppression,
    parse_key,
    suppression_key,
)
from mailsluice.contracts.topics import SUPPRESSIONS_TOPIC
from mailsluice.kafka.settings import KafkaSettings
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
