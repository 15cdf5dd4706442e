"""The campaign tally agent (streams/tally.py) on plain dicts instead of faust tables, and the
events the engagement tests give it."""

from __future__ import annotations

from typing import Any

from mailsluice.contracts.events import Event, EventType
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.streams.app import StreamsProcessor
from mailsluice.streams.campaigns import snapshot
from mailsluice.streams.settings import StreamsSettings
from mailsluice.streams.tally import CampaignTally

KEY = "acme|c1"


def tallied(wall: float = 1000.0) -> CampaignTally:
    processor = StreamsProcessor(
        StreamsSettings(app_id="tally-test", sweep_interval_s=1),
        KafkaSettings(),
        1,
        wall=lambda: wall,
    )
    t = processor.tally
    t.counts, t.destinations, t.deferred, t.engaged = {}, {}, {}, {}  # type: ignore[assignment]
    t._indexed = True
    return t


def published(t: CampaignTally, key: str = KEY) -> Any:
    dests = {d: t.destinations[f"{key}|{d}"] for d in t._destinations_of[key]}
    return snapshot(key, t.counts[key], dests, t._deferred_of[key], now=0.0)


def engagement_event(kind: EventType, q: str, ts: float, **kw: Any) -> Event:
    """An event of message `q` to ann@x.test at google, of acme's campaign c1 in pool bulk."""
    fields: dict[str, Any] = {
        "tenant": "acme",
        "campaign": "c1",
        "pool": "bulk",
        "queue_id": q,
        "recipient": "ann@x.test",
        "routing_key": "google#2",
        "ts": ts,
    }
    return Event(type=kind, **{**fields, **kw})
