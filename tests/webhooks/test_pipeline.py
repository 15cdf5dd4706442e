"""The webhook stage against the real broker and real receivers on 127.0.0.1: events written
to mailsluice.events reach only their own tenant's endpoints, signed; a receiver that answers
503 and then refuses connections gets every event once it is back, through the delay tiers;
an endpoint failing for the pause time is paused and its batches dead-lettered, visible with
`mailsluice webhooks dead` and sent again by `redrive` once resumed; an address the SSRF
check refuses is dead at once."""

from __future__ import annotations

import argparse
import base64
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from prometheus_client import REGISTRY
from support.events import publish_events
from support.eventually import eventually
from support.topic_reader import read_topic
from support.webhook_receiver import Receiver

from mailsluice.contracts.events import Event, EventType
from mailsluice.contracts.topics import (
    EVENTS_TOPIC,
    WEBHOOK_DEAD_TOPIC,
    WEBHOOKS_GROUP,
    webhook_topic_specs,
)
from mailsluice.contracts.webhook_records import EndpointState, decode_batch_record
from mailsluice.kafka.admin import ensure_topics, standard_topics
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.tenancy.model import parse_tenants
from mailsluice.tenancy.registry import Registry
from mailsluice.webhooks import admin
from mailsluice.webhooks.service import WebhooksService
from mailsluice.webhooks.settings import WebhooksSettings

FAST = {
    "http_port": 0,
    "batch_max_wait_ms": 100,
    "retry_delays_s": "0.5,1",
    "retry_for_s": 600,
    "allow_networks": "127.0.0.0/8",
}


def secret(seed: bytes) -> str:
    return "whsec_" + base64.b64encode(seed * 32).decode()


def tenant_name() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def tenant(
    name: str, url: str, key: str, events: Iterable[str] = ("delivered", "bounce")
) -> dict[str, Any]:
    return {
        "pools": ["default"],
        "domains": [f"{name}.test"],  # a sender domain belongs to one tenant
        "webhooks": [{"id": "main", "url": url, "events": list(events), "secrets": [key]}],
    }


@pytest.fixture(scope="module")
async def topics(kafka_settings: KafkaSettings) -> None:
    events = [s for s in standard_topics(kafka_settings, [], 1 << 20) if s.name == EVENTS_TOPIC]
    await ensure_topics(kafka_settings, events + webhook_topic_specs(1))


@pytest.fixture
async def receivers() -> AsyncIterator[list[Receiver]]:
    started = [await Receiver().start() for _ in range(2)]
    try:
        yield started
    finally:
        for receiver in started:
            await receiver.stop()


@asynccontextmanager
async def running(
    kafka_settings: KafkaSettings,
    tenants: dict[str, Any],
    events_group: str = WEBHOOKS_GROUP,
    **settings: Any,
) -> AsyncIterator[WebhooksService]:
    registry = Registry(tenants=parse_tenants(tenants))
    service = WebhooksService(
        WebhooksSettings(**{**FAST, **settings}),
        kafka_settings,
        registry,
        ops=False,
        consumer_options={"session_timeout_ms": 6000},
        events_group=events_group,
    )
    await service.start()
    try:
        await eventually(lambda: service.ready()[0], within=60, what="ready", detail=service.ready)
        yield service
    finally:
        await service.stop()


async def write_events(kafka_settings: KafkaSettings, events: list[Event]) -> None:
    await publish_events(kafka_settings, events, key=b"q")  # one partition: read in order


def events_of(name: str, kind: EventType, count: int) -> list[Event]:
    return [
        Event(type=kind, tenant=name, recipient=f"{kind}-{i}@{name}.test", queue_id=f"q{i}")
        for i in range(count)
    ]


def delivered_events() -> float:
    value = REGISTRY.get_sample_value("mailsluice_webhooks_events_total", {"result": "delivered"})
    return value or 0.0


def recipients(receiver: Receiver) -> list[str]:
    return [item["recipient"] for r in receiver.delivered() for item in r.batch()["data"]]


async def test_events_reach_only_their_tenants_endpoints_signed(
    topics: None, kafka_settings: KafkaSettings, receivers: list[Receiver]
) -> None:
    rx_a, rx_b = receivers
    a, b = tenant_name(), tenant_name()
    key_a, key_b = secret(b"a"), secret(b"b")
    tenants = {a: tenant(a, rx_a.url, key_a), b: tenant(b, rx_b.url, key_b, ["delivered"])}
    before = delivered_events()
    async with running(kafka_settings, tenants):
        await write_events(
            kafka_settings,
            events_of(a, EventType.DELIVERY, 5)
            + events_of(a, EventType.EXPIRATION, 2)  # a bounce
            + events_of(a, EventType.TRANSIENT_FAILURE, 3)  # deferred: not asked for
            + events_of(b, EventType.DELIVERY, 3)
            + events_of(b, EventType.BOUNCE, 2)  # b asked for delivered only
            + events_of("", EventType.DELIVERY, 2),  # no tenant: nobody's
        )
        await eventually(lambda: len(recipients(rx_a)) >= 7, within=30, what="a's 7 events")
        await eventually(lambda: len(recipients(rx_b)) >= 3, within=30, what="b's 3 events")
    assert all(r.endswith(f"@{a}.test") for r in recipients(rx_a))
    wanted_b = events_of(b, EventType.DELIVERY, 3)
    assert sorted(recipients(rx_b)) == sorted(e.recipient for e in wanted_b)
    assert len(recipients(rx_a)) == 7
    types = {(i["type"], i["event"]) for r in rx_a.delivered() for i in r.batch()["data"]}
    assert types == {("delivered", "delivery"), ("bounce", "expiration")}
    for got in rx_a.received:
        got.verify(key_a)
        assert got.batch()["data"][0]["tenant"] == a
    for got in rx_b.received:
        got.verify(key_b)
    assert delivered_events() - before == 10
    with pytest.raises(ValueError):
        rx_b.received[0].verify(key_a)


async def test_a_receiver_down_for_a_while_gets_every_event_afterwards(
    topics: None, kafka_settings: KafkaSettings, receivers: list[Receiver]
) -> None:
    rx = receivers[0]
    name, key = tenant_name(), secret(b"c")
    rx.status = 503
    async with running(kafka_settings, {name: tenant(name, rx.url, key)}) as service:
        await write_events(kafka_settings, events_of(name, EventType.DELIVERY, 10))
        await eventually(lambda: len(rx.received) >= 3, within=30, what="three 503 attempts")
        await rx.stop()  # now connections are refused
        status = service.book.get(name, "main")
        seen = status.consecutive_failures
        assert status.state is EndpointState.FAILING
        await eventually(
            lambda: service.book.get(name, "main").consecutive_failures >= seen + 3,
            within=30,
            what="three refused attempts",
        )
        await write_events(kafka_settings, events_of(name, EventType.BOUNCE, 10))
        rx.status = 200
        await rx.start()  # the same port again
        await eventually(lambda: len(recipients(rx)) >= 20, within=60, what="all 20 events")
        await eventually(
            lambda: service.book.get(name, "main").state is EndpointState.ACTIVE,
            within=10,
            what="the endpoint active again",
        )
    ids = rx.event_ids()
    assert len(ids) == len(set(ids)) == 20  # no crash here: each batch delivered once
    for got in rx.received:
        got.verify(key)  # a fresh timestamp and signature on every attempt
    failed_ids = {r.headers["webhook-id"] for r in rx.received if r.status == 503}
    delivered_ids = {r.headers["webhook-id"] for r in rx.delivered()}
    assert failed_ids <= delivered_ids  # a retried batch keeps its webhook-id


async def test_a_failing_endpoint_is_paused_its_batches_dead_until_resumed(
    topics: None,
    kafka_settings: KafkaSettings,
    receivers: list[Receiver],
    capsys: pytest.CaptureFixture[str],
) -> None:
    rx = receivers[0]
    rx.status = 500
    name, key = tenant_name(), secret(b"d")
    async with running(
        kafka_settings, {name: tenant(name, rx.url, key)}, pause_after_s=1
    ) as service:
        await write_events(kafka_settings, events_of(name, EventType.DELIVERY, 1))
        await eventually(
            lambda: service.book.paused(name, "main"), within=30, what="the endpoint paused"
        )
        tries = len(rx.received)
        await write_events(kafka_settings, events_of(name, EventType.BOUNCE, 2))
        dead = await read_topic(
            kafka_settings,
            WEBHOOK_DEAD_TOPIC,
            lambda r: decode_batch_record(r.value).tenant == name,
            expect=2,
        )
        assert len(rx.received) == tries  # nothing sent to a paused endpoint
        reasons = {decode_batch_record(r.value).reason for r in dead}
        assert "the endpoint is paused" in reasons
        args = argparse.Namespace(action="dead", tenant=name, json=False)
        assert await admin._dead(kafka_settings, args) == 0
        listed = capsys.readouterr().out
        assert f"{name}/main" in listed and "paused" in listed
        resume = argparse.Namespace(action="resume", tenant=name, endpoint="main")
        assert await admin._set_state(kafka_settings, resume) == 0
        await eventually(lambda: not service.book.paused(name, "main"), within=30, what="resumed")
        status = argparse.Namespace(action="status", tenant=name, json=False)
        assert await admin._status(kafka_settings, status) == 0
        assert f"{name}/main\tactive" in capsys.readouterr().out
        rx.status = 200
        redrive = argparse.Namespace(action="redrive", tenant=name, endpoint=None, since=0.0)
        assert await admin._redrive(kafka_settings, redrive) == 0
        await eventually(lambda: len(rx.event_ids()) >= 3, within=30, what="the dead events")
    wanted = {e.recipient for e in events_of(name, EventType.DELIVERY, 1)}
    wanted |= {e.recipient for e in events_of(name, EventType.BOUNCE, 2)}
    assert set(recipients(rx)) == wanted  # every event that was dead, once
    assert len(rx.event_ids()) == 3


async def test_a_refused_address_is_dead_at_once_with_its_reason(
    topics: None, kafka_settings: KafkaSettings, receivers: list[Receiver]
) -> None:
    rx = receivers[0]
    name = tenant_name()
    async with running(
        kafka_settings, {name: tenant(name, rx.url, secret(b"e"))}, allow_networks=""
    ):
        await write_events(kafka_settings, events_of(name, EventType.DELIVERY, 2))
        (dead,) = await read_topic(
            kafka_settings,
            WEBHOOK_DEAD_TOPIC,
            lambda r: decode_batch_record(r.value).tenant == name,
            expect=1,
        )
    batch = decode_batch_record(dead.value)
    assert "127.0.0.1 is a loopback address" in batch.reason
    assert (batch.attempts, batch.events) == (1, 2)
    assert rx.received == []


async def test_a_first_start_sends_only_events_from_then_on(
    topics: None, kafka_settings: KafkaSettings, receivers: list[Receiver]
) -> None:
    # a group with no committed offsets (a first deploy) begins at the end of the log
    rx, _ = receivers
    name = tenant_name()
    old = [
        Event(type=EventType.DELIVERY, tenant=name, recipient=f"old{i}@x.test") for i in range(3)
    ]
    new = [
        Event(type=EventType.DELIVERY, tenant=name, recipient=f"new{i}@x.test") for i in range(2)
    ]
    await write_events(kafka_settings, old)
    fresh = f"webhooks-first-{uuid.uuid4().hex[:8]}"
    async with running(kafka_settings, {name: tenant(name, rx.url, secret(b"f"))}, fresh):
        await write_events(kafka_settings, new)  # same partition, after the old ones
        await eventually(lambda: len(recipients(rx)) >= 2, within=60, what="the new events")
    # in partition order: had the old ones been read, they would have come first
    assert recipients(rx) == ["new0@x.test", "new1@x.test"]
