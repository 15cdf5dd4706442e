"""The tally agent's table updates (streams/tally.py) on plain dicts: the same results as the
reference `tally`, an event replayed after a crash counted once, the deferral index rebuilt
from the tables, and old entries swept."""

from __future__ import annotations

from typing import Any

from support.tally import published, tallied

from mailsluice.contracts.events import Event, EventType
from mailsluice.streams.campaigns import tally

KEY = "acme|c1"
DAY = 86400.0


def ev(kind: EventType, i: int, **kw: Any) -> Event:
    fields: dict[str, Any] = {
        "tenant": "acme",
        "campaign": "c1",
        "queue_id": f"q{i}",
        "recipient": f"r{i}@x.test",
        "routing_key": "google#0" if i % 2 else "yahoo",
        "ts": 1000.0,
    }
    return Event(type=kind, **{**fields, **kw})


EVENTS = [
    *(ev(EventType.RECEPTION, i) for i in range(6)),
    ev(EventType.TRANSIENT_FAILURE, 1),
    ev(EventType.TRANSIENT_FAILURE, 2),
    ev(EventType.TRANSIENT_FAILURE, 2),
    ev(EventType.DELIVERY, 1),
    ev(EventType.SUPPRESSED, 3),
    ev(EventType.BOUNCE, 4, code=550, enhanced="5.1.1"),
]


def test_the_tables_give_the_reference_counts() -> None:
    t = tallied()
    for offset, event in enumerate(EVENTS):
        t.count(KEY, event, 0, offset)
    assert published(t) == tally(EVENTS)[KEY]
    assert published(t).deferred == 1 and t.dirty == {KEY: 0}


def test_an_event_replayed_after_a_crash_counts_once() -> None:
    t = tallied()
    for offset, event in enumerate(EVENTS):
        t.count(KEY, event, 0, offset)
    before = (dict(t.counts), dict(t.destinations), dict(t.deferred))
    for offset, event in enumerate(EVENTS):  # faust replays from the last committed offset
        t.count(KEY, event, 0, offset)
    assert (t.counts, t.destinations, t.deferred) == before
    t.count(KEY, ev(EventType.DELIVERY, 5), 0, len(EVENTS))
    assert published(t).delivered == 2


def test_the_index_is_rebuilt_from_the_tables() -> None:
    t = tallied()
    for offset, event in enumerate(EVENTS):
        t.count(KEY, event, 0, offset)
    expected = published(t)
    t._deferred_of.clear()
    t._destinations_of.clear()
    t.dirty.clear()
    t._indexed = False
    t._mine = lambda: {0}  # type: ignore[method-assign]
    t._reindex()
    assert published(t) == expected
    assert t.dirty == {KEY: 0}  # published again after an assignment


def test_old_deferrals_and_campaigns_are_swept() -> None:
    t = tallied(wall=1000.0 + 20 * DAY)
    for offset, event in enumerate(EVENTS):
        t.count(KEY, event, 0, offset)
    t._sweep(0)
    assert t.deferred == {} and published(t).deferred == 0  # older than campaign_state_days
    t.processor.wall = lambda: 1000.0 + 100 * DAY
    t.processor._swept.clear()
    t._sweep(0)
    assert t.counts == {} and t.destinations == {} and t.dirty == {KEY: 0}
