"""Dedup of delivered recipients: bounded LRU keyed by message (message key, else queue id) +
recipient, and the pairs being sent right now."""

from __future__ import annotations

import time

from mailsluice.contracts.events import Event, EventType, encode_event
from mailsluice.delivery.worker.dedup import DeliveredCache, _remember, warm_from_events
from mailsluice.kafka.settings import KafkaSettings


def test_split_skips_delivered_recipients_case_insensitively() -> None:
    cache = DeliveredCache(10)
    cache.add("Q1", "a@example.com")
    todo, done = cache.split("Q1", ("A@example.com", "b@example.com"))
    assert todo == ["b@example.com"]
    assert done == ["A@example.com"]
    assert cache.split("Q2", ("a@example.com",)) == (["a@example.com"], [])


def test_bounded_and_least_recently_used_goes_first() -> None:
    cache = DeliveredCache(2)
    cache.add("Q", "a@x")
    cache.add("Q", "b@x")
    assert cache.seen("Q", "a@x")  # a is now the most recent
    cache.add("Q", "c@x")
    assert len(cache) == 2
    assert cache.seen("Q", "a@x")
    assert not cache.seen("Q", "b@x")
    assert cache.seen("Q", "c@x")


def test_zero_size_remembers_nothing() -> None:
    cache = DeliveredCache(0)
    cache.add("Q", "a@x")
    assert len(cache) == 0
    assert not cache.seen("Q", "a@x")


async def test_warm_up_with_kafka_unreachable_gives_up_within_its_budget() -> None:
    # best effort: a broker that does not answer costs the budget, never an exception
    unreachable = KafkaSettings(bootstrap="127.0.0.1:9", request_timeout_ms=1000)
    cache = DeliveredCache(10)
    started = time.monotonic()
    added = await warm_from_events(unreachable, "p", cache, since=0.0, budget_s=1.5)
    assert added == 0 and len(cache) == 0
    assert time.monotonic() - started < 10


def test_a_claim_holds_the_recipients_being_sent_until_unclaimed() -> None:
    cache = DeliveredCache(10)
    cache.add("K", "done@x")
    assert cache.claim("K", ("done@x", "a@x")) == (["a@x"], ["done@x"])
    assert cache.claim("K", ("A@x",)) is None  # a second copy while the first is sent
    assert cache.claim("K", ("b@x",)) == (["b@x"], [])  # other recipients go on
    cache.unclaim("K", ["a@x"])
    assert cache.claim("K", ("a@x",)) == (["a@x"], [])  # sending failed: the copy may go


def test_warm_up_remembers_delivery_events_by_message_key_else_queue_id() -> None:
    cache = DeliveredCache(10)
    keyed = Event(
        type=EventType.DELIVERY, queue_id="Q1", pool="p", recipient="a@x", message_key="K"
    )
    older = Event(type=EventType.DELIVERY, queue_id="Q2", pool="p", recipient="b@x")
    bounce = Event(type=EventType.BOUNCE, queue_id="Q3", pool="p", recipient="c@x")
    elsewhere = Event(type=EventType.DELIVERY, queue_id="Q4", pool="o", recipient="d@x")
    added = sum(_remember(cache, "p", encode_event(e)) for e in (keyed, older, bounce, elsewhere))
    assert added == 2
    assert cache.seen("K", "a@x") and not cache.seen("Q1", "a@x")
    assert cache.seen("Q2", "b@x")
    assert not cache.seen("Q3", "c@x") and not cache.seen("Q4", "d@x")
