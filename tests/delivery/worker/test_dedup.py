"""Dedup of delivered recipients: bounded LRU keyed by queue id + recipient."""

from __future__ import annotations

import time

from mailsluice.delivery.worker.dedup import DeliveredCache, warm_from_events
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
