"""Events gathered into batches per (tenant, endpoint): a batch closes when it holds
`max_events`, when one more event would take its body past `max_bytes`, or `max_wait_s` after
its first event. Each batch remembers the records it holds events of (`sources`), so the
dispatcher commits a record only once every batch holding it is finished. Pure: the caller
passes the clock."""

from __future__ import annotations

import json
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

# What a batch's envelope adds to its items' bytes: {"type":...,"timestamp":...,"data":[]}.
ENVELOPE_BYTES = 120


@dataclass
class Batch:
    tenant: str
    endpoint: str
    opened: float
    items: list[dict[str, Any]] = field(default_factory=list)
    sources: list[Hashable] = field(default_factory=list)
    size: int = ENVELOPE_BYTES


def item_size(item: dict[str, Any]) -> int:
    return len(json.dumps(item, separators=(",", ":"), ensure_ascii=False).encode()) + 1


class Batcher:
    def __init__(self, max_events: int, max_bytes: int, max_wait_s: float) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.max_wait_s = max_wait_s
        self._open: dict[tuple[str, str], Batch] = {}
        self.buffered = 0  # events in open batches

    def add(
        self, tenant: str, endpoint: str, item: dict[str, Any], source: Hashable, now: float
    ) -> list[Batch]:
        """Add one event; returns the batches this closed (none, one, or two when the event
        alone is over max_bytes and goes by itself)."""
        closed: list[Batch] = []
        size = item_size(item)
        key = (tenant, endpoint)
        batch = self._open.get(key)
        if batch is not None and batch.size + size > self.max_bytes:
            closed.append(self._close(key))
            batch = None
        if batch is None:
            batch = self._open[key] = Batch(tenant, endpoint, now)
        batch.items.append(item)
        batch.sources.append(source)
        batch.size += size
        self.buffered += 1
        if len(batch.items) >= self.max_events or batch.size >= self.max_bytes:
            closed.append(self._close(key))
        return closed

    def due(self, now: float) -> list[Batch]:
        """Batches open for max_wait_s or longer, closed now."""
        keys = [k for k, b in self._open.items() if now - b.opened >= self.max_wait_s]
        return [self._close(k) for k in keys]

    def next_due(self) -> float | None:
        if not self._open:
            return None
        return min(b.opened for b in self._open.values()) + self.max_wait_s

    def _close(self, key: tuple[str, str]) -> Batch:
        batch = self._open.pop(key)
        self.buffered -= len(batch.items)
        return batch
