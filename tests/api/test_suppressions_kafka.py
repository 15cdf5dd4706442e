"""`/v1/suppressions` over the real topic: entries added over HTTP reach a SuppressionStore that
reads mailsluice.suppressions (and the listing), a removal takes them out, and a tenant never
lists another's."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from fastapi import FastAPI
from support.api import header_tenants
from support.asgi_server import serving
from support.eventually import eventually

from mailsluice.api.suppressions import TopicWriter, router
from mailsluice.contracts.suppressions import Scope
from mailsluice.contracts.topics import SUPPRESSIONS_TOPIC
from mailsluice.kafka.admin import ensure_topics, standard_topics
from mailsluice.kafka.clients import make_producer
from mailsluice.kafka.producers import RenewingProducer
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.suppression.store import SuppressionStore
from mailsluice.tenancy.model import parse_tenants

TENANTS = parse_tenants(
    {
        "acme": {"pools": ["default"], "domains": ["acme.test"]},
        "beta": {"pools": ["default"], "domains": ["beta.test"]},
    }
)


tenant_of = header_tenants(TENANTS)


@dataclass
class Api:
    url: str
    store: SuppressionStore  # the API's own
    watcher: SuppressionStore  # another reader of the topic, as delivery and ingest are

    async def call(self, method: str, path: str, tenant: str, **kw: Any) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as http:
            resp = await http.request(method, self.url + path, headers={"x-tenant": tenant}, **kw)
            text = await resp.text()
            return resp.status, (await resp.json(content_type=None)) if text else None


@pytest.fixture
async def api(kafka, kafka_settings: KafkaSettings) -> AsyncIterator[Api]:
    specs = standard_topics(kafka_settings, [], 1 << 20)
    await ensure_topics(kafka_settings, [s for s in specs if s.name == SUPPRESSIONS_TOPIC])
    producer = RenewingProducer(
        lambda: make_producer(kafka_settings, max_message_size=65536, client_id="test-api"),
        name="test-api",
    )
    store = SuppressionStore(kafka_settings, client_id="test-api-store")
    watcher = SuppressionStore(kafka_settings, client_id="test-api-watcher")
    await producer.get()
    await store.start()
    await watcher.start()
    app = FastAPI()
    app.include_router(router(tenant_of, store, TopicWriter(producer.send_all)))
    try:
        async with serving(app) as url:
            yield Api(url, store, watcher)
    finally:
        await watcher.stop()
        await store.stop()
        await producer.stop()


async def test_added_entries_reach_every_reader_of_the_topic_and_go_when_removed(
    api: Api,
) -> None:
    mine, theirs = f"m-{uuid.uuid4().hex[:8]}@x.test", f"t-{uuid.uuid4().hex[:8]}@x.test"
    entries = [{"address": mine}, {"address": mine, "scope": "list:acme/news"}]
    status, body = await api.call("POST", "/v1/suppressions", "acme", json={"entries": entries})
    assert status == 201, body
    status, _ = await api.call(
        "POST", "/v1/suppressions", "beta", json={"entries": [{"address": theirs}]}
    )
    assert status == 201
    acme, news, beta = (
        Scope.parse("tenant:acme"),
        Scope.parse("list:acme/news"),
        Scope.parse("tenant:beta"),
    )
    # acknowledged before the 201: another reader of the topic finds them
    await api.watcher.wait_for(
        lambda: (
            api.watcher.suppressed(mine, (acme,))
            and api.watcher.suppressed(mine, (news,))
            and api.watcher.suppressed(theirs, (beta,))
        )
    )
    entry = api.watcher.match(mine, (acme,))
    assert entry is not None and entry.source == "api" and not api.watcher.contains(mine)

    async def listed(tenant: str, prefix: str) -> list[tuple[str, str]] | None:
        status, body = await api.call(
            "GET", "/v1/suppressions", tenant, params={"address_prefix": prefix}
        )
        assert status == 200, body
        return [(e["address"], e["scope"]) for e in body["data"]] or None

    assert await eventually(lambda: listed("acme", mine[:10]), within=10, what="listed") == [
        (mine, "list:acme/news"),
        (mine, "tenant:acme"),
    ]
    assert await listed("acme", theirs[:10]) is None  # beta's entry stays beta's
    assert await eventually(lambda: listed("beta", theirs[:10]), within=10, what="beta") == [
        (theirs, "tenant:beta")
    ]
    status, _ = await api.call("DELETE", f"/v1/suppressions/tenant:beta/{theirs}", "acme")
    assert status == 403
    status, _ = await api.call("DELETE", f"/v1/suppressions/list:acme/news/{mine}", "acme")
    assert status == 204
    await api.watcher.wait_for(lambda: not api.watcher.suppressed(mine, (news,)))
    assert api.watcher.suppressed(mine, (acme,)) and api.watcher.suppressed(theirs, (beta,))
