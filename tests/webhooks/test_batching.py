"""Batches per (tenant, endpoint): closed by count, by bytes, or by age on a simulated clock;
tenants and endpoints never share a batch."""

from __future__ import annotations

from typing import Any

from mailsluice.webhooks.batching import Batcher, item_size


def item(n: int, text: str = "") -> dict[str, Any]:
    return {"id": f"evt_0_{n}", "text": text}


def test_a_batch_closes_at_max_events() -> None:
    batcher = Batcher(max_events=3, max_bytes=1 << 20, max_wait_s=10)
    assert batcher.add("a", "main", item(1), 1, now=0) == []
    assert batcher.add("a", "main", item(2), 2, now=0) == []
    (batch,) = batcher.add("a", "main", item(3), 3, now=0)
    assert [i["id"] for i in batch.items] == ["evt_0_1", "evt_0_2", "evt_0_3"]
    assert batch.sources == [1, 2, 3]
    assert batcher.buffered == 0


def test_tenants_and_endpoints_never_share_a_batch() -> None:
    batcher = Batcher(max_events=10, max_bytes=1 << 20, max_wait_s=1)
    batcher.add("a", "main", item(1), 1, now=0)
    batcher.add("b", "main", item(2), 2, now=0)
    batcher.add("a", "audit", item(3), 3, now=0)
    assert batcher.buffered == 3
    due = batcher.due(now=1)
    assert sorted((b.tenant, b.endpoint, len(b.items)) for b in due) == [
        ("a", "audit", 1),
        ("a", "main", 1),
        ("b", "main", 1),
    ]


def test_a_batch_is_due_max_wait_after_its_first_event() -> None:
    batcher = Batcher(max_events=10, max_bytes=1 << 20, max_wait_s=1.0)
    batcher.add("a", "main", item(1), 1, now=10.0)
    batcher.add("a", "main", item(2), 2, now=10.8)
    assert batcher.next_due() == 11.0
    assert batcher.due(now=10.99) == []
    (batch,) = batcher.due(now=11.0)
    assert len(batch.items) == 2
    assert batcher.next_due() is None


def test_an_event_that_would_overflow_the_bytes_starts_a_new_batch() -> None:
    big = item(1, "x" * 600)
    batcher = Batcher(max_events=100, max_bytes=item_size(big) * 2 + 200, max_wait_s=1)
    assert batcher.add("a", "main", big, 1, now=0) == []
    assert batcher.add("a", "main", item(2, "x" * 600), 2, now=0) == []
    (first,) = batcher.add("a", "main", item(3, "x" * 600), 3, now=0)
    assert first.sources == [1, 2]
    assert batcher.buffered == 1


def test_an_event_bigger_than_max_bytes_goes_alone() -> None:
    batcher = Batcher(max_events=100, max_bytes=300, max_wait_s=1)
    batcher.add("a", "main", item(1), 1, now=0)
    closed = batcher.add("a", "main", item(2, "x" * 500), 2, now=0)
    assert [b.sources for b in closed] == [[1], [2]]
