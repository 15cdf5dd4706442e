"""The hygiene agent's table updates (streams/hygiene.py) on a plain dict, Kafka replaced by a
list: the suppression record goes before the engagement record, a replayed event counts once,
a human open lifts, and idle addresses are forgotten."""

from __future__ import annotations

from typing import Any

from mailsluice.contracts.engagement import DAY_S, decode_engagement
from mailsluice.contracts.events import Event, EventType
from mailsluice.contracts.topics import ENGAGEMENT_TOPIC, SUPPRESSIONS_TOPIC
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.streams.app import StreamsProcessor
from mailsluice.streams.hygiene import Hygiene
from mailsluice.streams.settings import StreamsSettings
from mailsluice.tenancy.model import parse_tenants
from mailsluice.tenancy.registry import Registry

T0 = 1_700_000_000.0
TENANTS = {
    "acme": {"pools": ["p"], "domains": ["acme.test"], "hygiene": {"enabled": True}},
    "beta": {"pools": ["p"], "domains": ["beta.test"]},
}


def agent(wall: float = T0 + 100 * DAY_S) -> tuple[Hygiene, list[tuple[str, bytes, Any]]]:
    processor = StreamsProcessor(
        StreamsSettings(app_id="hygiene-test", sweep_interval_s=1),
        KafkaSettings(),
        1,
        wall=lambda: wall,
    )
    h = processor.hygiene
    h.tenants = Registry(tenants=parse_tenants(TENANTS))
    h.table = {}  # type: ignore[assignment]
    sent: list[tuple[str, bytes, Any]] = []

    async def send(topic: Any, key: bytes, value: bytes | None, *, acked: bool) -> None:
        name = topic if isinstance(topic, str) else topic.get_topic_name()
        sent.append((name, key, value))

    processor.send = send  # type: ignore[method-assign]
    return h, sent


def delivery(day: float, tenant: str = "acme", **kw: Any) -> Event:
    return Event(
        type=EventType.DELIVERY, ts=T0 + day * DAY_S, tenant=tenant, recipient="A@x.test", **kw
    )


async def feed(h: Hygiene, events: list[Event], first_offset: int = 0) -> None:
    for offset, event in enumerate(events, start=first_offset):
        await h.apply(event, 0, offset)


async def test_the_tenth_delivery_suppresses_in_the_tenants_scope_before_its_record() -> None:
    h, sent = agent()
    await feed(h, [delivery(10 * i) for i in range(10)])
    topics = [name for name, _, _ in sent]
    assert topics == [ENGAGEMENT_TOPIC] * 9 + [SUPPRESSIONS_TOPIC, ENGAGEMENT_TOPIC]
    assert sent[9][1] == b"tenant:acme|a@x.test"
    last = decode_engagement(sent[-1][2])
    assert (last.deliveries, last.unengaged_at) == (10, T0 + 90 * DAY_S)


async def test_a_replayed_event_counts_once_and_a_policy_off_tenant_is_not_suppressed() -> None:
    h, sent = agent()
    events = [delivery(10 * i) for i in range(5)]
    await feed(h, events)
    await feed(h, events)  # faust replays from the last committed offset
    assert h.table["acme|a@x.test"]["r"]["deliveries"] == 5
    h, sent = agent()
    await feed(h, [delivery(10 * i, tenant="beta") for i in range(12)])
    assert {name for name, _, _ in sent} == {ENGAGEMENT_TOPIC}


async def test_a_human_open_lifts_the_suppression_and_a_machine_open_does_not() -> None:
    h, sent = agent()
    await feed(h, [delivery(10 * i) for i in range(10)])
    sent.clear()
    proxy = Event(
        type=EventType.OPEN,
        ts=T0 + 95 * DAY_S,
        tenant="acme",
        recipient="a@x.test",
        machine="privacy_proxy",
    )
    await feed(h, [proxy], first_offset=10)
    assert sent == []
    human = proxy.model_copy(update={"machine": ""})
    await feed(h, [human], first_offset=11)
    assert sent[0] == (SUPPRESSIONS_TOPIC, b"tenant:acme|a@x.test", None)
    assert decode_engagement(sent[-1][2]).unengaged_at == 0


async def test_idle_addresses_are_forgotten_with_a_tombstone() -> None:
    h, sent = agent(wall=T0 + 500 * DAY_S)
    await feed(h, [delivery(0)])
    assert h.table == {} and sent[-1] == (ENGAGEMENT_TOPIC, b"acme|a@x.test", None)
    h, sent = agent(wall=T0 + 300 * DAY_S)
    await feed(h, [delivery(0)])
    assert list(h.table) == ["acme|a@x.test"]
