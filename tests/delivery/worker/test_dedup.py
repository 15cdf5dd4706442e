"""Dedup of delivered recipients: bounded LRU keyed by queue id + recipient."""

from __future__ import annotations

from mailsluice.delivery.worker.dedup import DeliveredCache


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
