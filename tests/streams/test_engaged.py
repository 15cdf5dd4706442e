"""Engagement per tenant, provider and day (streams/engaged.py) on plain dicts: the buckets an
event counts in (its message's delivery day), a replayed event counted once, the Prometheus
counters per pool and provider, the sweeps, and the records published."""

from __future__ import annotations

from typing import Any

from support.metrics import sample
from support.tally import engagement_event

from mailsluice.contracts.engagement_stats import decode_bucket
from mailsluice.contracts.events import Event, EventType
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.streams.app import StreamsProcessor
from mailsluice.streams.engaged import EngagementDays
from mailsluice.streams.settings import StreamsSettings

DAY = 86400.0
T = 20000 * DAY + 3600.0  # 2024-10-04 01:00 UTC


def counted(wall: float = T) -> EngagementDays:
    processor = StreamsProcessor(
        StreamsSettings(app_id="engaged-test", sweep_interval_s=1),
        KafkaSettings(),
        2,
        wall=lambda: wall,
    )
    e = processor.engagement
    e.seen, e.days = {}, {}  # type: ignore[assignment]
    e._republished = True
    return e


def ev(kind: EventType, q: str = "q1", ts: float = T, **kw: Any) -> Event:
    return engagement_event(kind, q, ts, **kw)


def samples(labels: dict[str, str]) -> dict[str, float]:
    return {
        "delivered": sample("mailsluice_streams_delivered_total", **labels),
        "human": sample("mailsluice_streams_opens_total", **labels, kind="human"),
        "all": sample("mailsluice_streams_opens_total", **labels, kind="all"),
        "retracted": sample("mailsluice_streams_human_retracted_total", **labels, kind="click"),
        "every": sample("mailsluice_streams_every_link_total", **labels),
    }


def feed(e: EngagementDays, events: list[Event], partition: int = 1) -> None:
    for offset, event in enumerate(events):
        e.observe(event, partition, offset)


def test_deliveries_opens_and_clicks_count_on_the_delivery_day() -> None:
    e = counted()
    sent = T - DAY  # delivered yesterday, opened today: yesterday's rates
    feed(
        e,
        [
            ev(EventType.DELIVERY, ts=sent),
            ev(EventType.DELIVERY, "q2", ts=sent, routing_key="mx.example.org"),
            ev(EventType.OPEN, sent_at=sent, machine="privacy_proxy"),
            ev(EventType.OPEN, ts=T + 60, sent_at=sent),
            ev(EventType.CLICK, ts=T + 90, sent_at=sent, link_index=0),
            ev(EventType.RECEPTION, "q3"),  # counts nowhere
        ],
    )
    assert e.days == {
        "acme|google|2024-10-03|1": {
            "c": {"delivered": 1, "opens": 1, "opens_human": 1, "clicks": 1, "clicks_human": 1},
            "o": 4,
            "p": 1,
        },
        "acme|other|2024-10-03|1": {"c": {"delivered": 1}, "o": 1, "p": 1},
    }
    assert e.dirty == set(e.days)


def test_a_replayed_event_counts_once_and_metrics_are_per_pool_and_provider() -> None:
    e = counted()
    labels = {"pool": "bulk", "provider": "yahoo"}
    before = samples(labels)
    clicks = [
        ev(EventType.CLICK, ts=T + i * 0.3, link_index=i, routing_key="yahoo") for i in (0, 1, 2)
    ]
    events = [ev(EventType.DELIVERY, routing_key="yahoo"), ev(EventType.OPEN, routing_key="yahoo")]
    feed(e, events + clicks)
    feed(e, events + clicks)  # replayed from an older offset after a crash
    assert e.days["acme|yahoo|2024-10-04|1"]["c"] == {
        "delivered": 1,
        "opens": 1,
        "opens_human": 1,
        "clicks": 1,
        "clicks_human": 0,
        "every_link": 1,
    }
    after = samples(labels)
    assert {k: after[k] - before[k] for k in after} == {
        "delivered": 1,
        "human": 1,
        "all": 1,
        "retracted": 1,
        "every": 1,
    }


def test_old_states_and_days_are_swept_and_their_records_deleted() -> None:
    e = counted()
    feed(e, [ev(EventType.DELIVERY), ev(EventType.OPEN)])
    feed(e, [ev(EventType.OPEN, "q9")], partition=0)
    e.dirty.clear()
    e.processor.wall = lambda: T + 40 * DAY
    e.sweep(1)
    assert list(e.seen) == ["q9|ann@x.test"]  # partition 0's: swept by its own partition
    assert list(e.days) == ["acme|google|2024-10-04|0"]
    assert e.dirty == {"acme|google|2024-10-04|1"}


async def test_the_changed_days_are_published() -> None:
    e = counted()
    sent: list[tuple[bytes, bytes | None]] = []

    class Topic:
        async def send(self, *, key: bytes, value: bytes | None) -> Any:
            sent.append((key, value))

            async def acked() -> None:
                return None

            return acked()

    e.topic = Topic()  # type: ignore[assignment]
    e.processor.ready = lambda: (True, "")  # type: ignore[method-assign]
    feed(e, [ev(EventType.DELIVERY), ev(EventType.OPEN)])
    e.dirty.add("acme|google|2024-09-01|1")  # swept: a tombstone
    await e.publish_changed()
    assert e.dirty == set()
    assert sent[0] == (b"acme|google|2024-09-01|1", None)
    bucket = decode_bucket(sent[1][1] or b"")
    assert (bucket.tenant, bucket.provider, bucket.day, bucket.partition) == (
        "acme",
        "google",
        "2024-10-04",
        1,
    )
    assert (bucket.delivered, bucket.opens_human) == (1, 1)
    assert bucket.rates(human=True)["open_rate"] == 1.0
