"""`mailsluice api` in this process over real HTTP with the real broker: a 1,000-recipient batch
becomes 1,000 queue records, each with its own rendering, answered only once they are in
Kafka; an Idempotency-Key sends nothing twice, also through another replica; the suppression
topic holds recipients back; stored templates are versioned and shared by the replicas."""

from __future__ import annotations

import email
import json
import time
import uuid
from collections.abc import AsyncIterator
from email import policy
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer
from support.api import ACME_KEY, BETA_KEY, auth, running
from support.delivery_worker import new_pool, setup_pool
from support.eventually import eventually
from support.topic_reader import read_topic

from mailsluice.api.service import ApiService
from mailsluice.contracts.envelope import envelope_from_headers
from mailsluice.contracts.events import EventType, decode_event
from mailsluice.contracts.suppressions import Scope, ScopeKind
from mailsluice.contracts.topics import EVENTS_TOPIC, WEBHOOK_STATUS_TOPIC, queue_topic
from mailsluice.contracts.webhook_records import EndpointState, EndpointStatus, encode_status
from mailsluice.kafka.settings import KafkaSettings

OPENAPI_DOC = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"


@pytest.fixture(scope="module")
async def pool(kafka_settings: KafkaSettings) -> str:
    name = new_pool()
    await setup_pool(kafka_settings, name)
    return name


@pytest.fixture(scope="module")
async def api(kafka_settings: KafkaSettings, pool: str) -> AsyncIterator[ApiService]:
    async with running(kafka_settings, pool) as service:
        yield service


async def post(
    service: ApiService, path: str, body: dict[str, Any], **headers: str
) -> tuple[int, Any]:
    url = f"http://127.0.0.1:{service.port}{path}"
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, json=body, headers={**auth(), **headers}) as resp,
    ):
        return resp.status, await resp.json(content_type=None)


def batch(count: int, campaign: str, **extra: Any) -> dict[str, Any]:
    return {
        "from": {"email": "news@acme.test"},
        "subject": "{{ first }}, your order {{ order }}",
        "text": "Dear {{ first }},\n{% for item in items %}- {{ item }}\n{% endfor %}",
        "html": "<p>Dear <b>{{ first }}</b></p>",
        "campaign": campaign,
        "tags": ["orders"],
        "recipients": [
            {
                "to": {"email": f"r{i}@{'gmail.com' if i % 2 else 'example.com'}"},
                "data": {"first": f"N{i}", "order": 1000 + i, "items": [f"i{i}", f"j{i}"]},
            }
            for i in range(count)
        ],
        **extra,
    }


async def records_of(kafka_settings: KafkaSettings, pool: str, ids: set[str]) -> list[Any]:
    return await read_topic(
        kafka_settings,
        queue_topic(pool),
        lambda r: envelope_from_headers(r.headers).queue_id in ids,
        expect=0,
    )


async def test_a_thousand_recipients_each_get_their_own_rendering(
    api: ApiService, kafka_settings: KafkaSettings, pool: str
) -> None:
    campaign = f"c{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    status, answer = await post(api, "/v1/messages", batch(1000, campaign))
    took = time.monotonic() - started
    assert status == 202, answer
    assert answer["accepted"] == 1000
    ids = {r["id"] for r in answer["results"]}
    # read "to the end as it stands": every record is there when the 202 is
    records = await records_of(kafka_settings, pool, ids)
    assert len(records) == 1000
    by_rcpt = {envelope_from_headers(r.headers).recipients[0]: r for r in records}
    for i in range(1000):
        rcpt = f"r{i}@{'gmail.com' if i % 2 else 'example.com'}"
        record = by_rcpt[rcpt]
        env = envelope_from_headers(record.headers)
        assert record.key == (b"google" if i % 2 else b"example.com")  # the provider rollup
        assert (env.tenant, env.campaign, env.tags, env.pool) == (
            "acme",
            campaign,
            ("orders",),
            pool,
        )
        msg = email.message_from_bytes(record.value, policy=policy.default)
        assert msg["Subject"] == f"N{i}, your order {1000 + i}"
        assert msg["To"] == rcpt
        text, html = (part.get_content().replace("\r\n", "\n") for part in msg.iter_parts())
        assert text == f"Dear N{i},\n- i{i}\n- j{i}\n"
        assert html.strip() == f"<p>Dear <b>N{i}</b></p>"
    events = await read_topic(
        kafka_settings,
        EVENTS_TOPIC,
        lambda r: decode_event(r.value).campaign == campaign,
        expect=0,
    )
    assert len(events) == 1000
    assert {decode_event(e.value).type for e in events} == {EventType.RECEPTION}
    assert took < 30, took


async def test_an_idempotency_key_sends_nothing_twice_on_any_replica(
    api: ApiService, kafka_settings: KafkaSettings, pool: str
) -> None:
    key = f"order-{uuid.uuid4().hex}"
    body = batch(3, "idem")
    first = await post(api, "/v1/messages", body, **{"Idempotency-Key": key})
    again = await post(api, "/v1/messages", body, **{"Idempotency-Key": key})
    assert first[0] == again[0] == 202
    assert first[1] == again[1]
    async with running(kafka_settings, pool) as replica:  # reads the answers topic at start
        other = await post(replica, "/v1/messages", body, **{"Idempotency-Key": key})
        assert other == first
        changed = await post(replica, "/v1/messages", batch(2, "idem"), **{"Idempotency-Key": key})
        assert changed[0] == 422
    ids = {r["id"] for r in first[1]["results"]}
    keys = {
        envelope_from_headers(r.headers).message_key
        for r in await read_topic(
            kafka_settings,
            queue_topic(pool),
            lambda r: envelope_from_headers(r.headers).campaign == "idem",
            expect=0,
        )
    }
    assert len(keys) == 3  # three messages were written, once each
    assert len(await records_of(kafka_settings, pool, ids)) == 3


async def call(
    service: ApiService, method: str, path: str, key: str, body: Any = None
) -> tuple[int, Any]:
    url = f"http://127.0.0.1:{service.port}{path}"
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, url, json=body, headers=auth(key)) as resp,
    ):
        text = await resp.text()
        return resp.status, json.loads(text) if text else None


async def test_a_recipient_suppressed_over_the_api_is_not_sent(
    api: ApiService, kafka_settings: KafkaSettings, pool: str
) -> None:
    held = f"held-{uuid.uuid4().hex[:8]}@example.com"
    added = {"entries": [{"address": held, "scope": "tenant:acme", "reason": "asked"}]}
    assert (await call(api, "POST", "/v1/suppressions", ACME_KEY, added))[0] == 201
    scope = Scope(ScopeKind.TENANT, tenant="acme")
    await api.store.wait_for(lambda: api.store.suppressed(held, (scope,)))
    body = batch(2, "supp")
    body["recipients"][1]["to"]["email"] = held
    status, answer = await post(api, "/v1/messages", body)
    assert status == 202
    assert [(r["status"], r["reason"]) for r in answer["results"]] == [
        ("accepted", ""),
        ("suppressed", "tenant:acme"),
    ]
    assert len(await records_of(kafka_settings, pool, {answer["results"][1]["id"]})) == 0


async def test_a_tenant_reads_and_changes_neither_anothers_suppressions_nor_stats(
    api: ApiService,
) -> None:
    held = f"own-{uuid.uuid4().hex[:8]}@example.com"
    added = {"entries": [{"address": held, "scope": "tenant:acme"}]}
    assert (await call(api, "POST", "/v1/suppressions", ACME_KEY, added))[0] == 201
    scope = Scope(ScopeKind.TENANT, tenant="acme")
    await api.store.wait_for(lambda: api.store.suppressed(held, (scope,)))
    status, mine = await call(api, "GET", "/v1/suppressions?limit=1000", ACME_KEY)
    assert status == 200 and held in [e["address"] for e in mine["data"]]
    status, theirs = await call(api, "GET", "/v1/suppressions?limit=1000", BETA_KEY)
    assert status == 200 and held not in [e["address"] for e in theirs["data"]]
    status, problem = await call(api, "POST", "/v1/suppressions", BETA_KEY, added)
    assert status == 403 and problem["status"] == 403
    gone = f"/v1/suppressions/tenant:acme/{held}"
    assert (await call(api, "DELETE", gone, BETA_KEY))[0] == 403
    # a campaign is looked up under the caller's own name: another's is as unknown as none
    for key in (ACME_KEY, BETA_KEY):
        status, problem = await call(api, "GET", "/v1/campaigns/no-such-campaign", key)
        assert status == 404 and problem["title"]
    assert (await call(api, "GET", "/v1/suppressions", "ms_nokey000_" + "X" * 43))[0] == 401


async def test_stored_templates_are_versioned_and_shared_by_replicas(
    api: ApiService, kafka_settings: KafkaSettings, pool: str
) -> None:
    tid = f"welcome-{uuid.uuid4().hex[:6]}"
    v1 = {"id": tid, "subject": "Hi {{ first }}", "text": "v1 {{ first }}"}
    assert (await post(api, "/v1/templates", v1))[0] == 201
    status, saved = await post(api, "/v1/templates", {**v1, "text": "v2 {{ first }}"})
    assert (status, saved["version"]) == (201, 2)
    bad = await post(api, "/v1/templates", {**v1, "text": "{% for %}"})
    assert bad[0] == 422
    async with running(kafka_settings, pool) as replica:
        url = f"http://127.0.0.1:{replica.port}/v1/templates/{tid}"
        async with aiohttp.ClientSession() as http:
            async with http.get(url, headers=auth()) as resp:
                assert (await resp.json())["version"] == 2
            async with http.get(f"{url}/versions/1", headers=auth()) as resp:
                assert (await resp.json())["text"] == "v1 {{ first }}"
        body = {
            "from": {"email": "news@acme.test"},
            "template": {"id": tid, "version": 1},
            "recipients": [{"to": {"email": "t@example.com"}, "data": {"first": "Tia"}}],
        }
        status, answer = await post(replica, "/v1/messages", body)
    assert status == 202, answer
    (record,) = await records_of(kafka_settings, pool, {answer["results"][0]["id"]})
    msg = email.message_from_bytes(record.value, policy=policy.default)
    assert (msg["Subject"], msg.get_content().strip()) == ("Hi Tia", "v1 Tia")


async def test_the_api_serves_the_document_in_docs(api: ApiService) -> None:
    # every router the service mounts (messages, templates, suppressions, campaigns)
    url = f"http://127.0.0.1:{api.port}/openapi.json"
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200
        served_doc = await resp.json()
    assert served_doc == json.loads(OPENAPI_DOC.read_text())
    post = served_doc["paths"]["/v1/messages"]["post"]
    assert set(post["responses"]) >= {"202", "401", "403", "409", "422", "429", "503"}
    problem = post["responses"]["422"]["content"]
    assert list(problem) == ["application/problem+json"]
    schema = served_doc["components"]["schemas"]["SendRequest"]
    assert "from" in schema["properties"] and schema["additionalProperties"] is False


async def test_a_tenant_sees_its_webhook_endpoints_state_and_no_secret(
    api: ApiService, kafka_settings: KafkaSettings
) -> None:
    paused = EndpointStatus(
        tenant="acme",
        endpoint="main",
        state=EndpointState.PAUSED,
        since=1_800_000_000.0,
        failing_since=1_799_000_000.0,
        consecutive_failures=40,
        last_error="503 Service Unavailable",
        updated=time.time(),
    )
    producer = AIOKafkaProducer(bootstrap_servers=kafka_settings.bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(WEBHOOK_STATUS_TOPIC, encode_status(paused), key=paused.key)
    finally:
        await producer.stop()
    await eventually(
        lambda: api.webhooks.get("acme", "main").state is EndpointState.PAUSED,
        within=30,
        what="the status read by the API",
    )
    status, mine = await call(api, "GET", "/v1/webhooks", ACME_KEY)
    assert status == 200
    [endpoint] = mine["data"]
    assert (endpoint["id"], endpoint["state"], endpoint["consecutive_failures"]) == (
        "main",
        "paused",
        40,
    )
    assert endpoint["last_error"] == "503 Service Unavailable"
    assert "whsec_" not in json.dumps(mine)
    status, theirs = await call(api, "GET", "/v1/webhooks", BETA_KEY)
    assert (status, theirs["data"]) == (200, [])
