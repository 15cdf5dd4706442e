"""Per-partition offset ledger: which offsets are safe to commit when messages finish out of order.

A worker delivers many destinations from one partition at once, so offsets finish in any order.
The committable offset is the lowest one still unfinished: committing past it would lose that
message if the worker died (the reason delivery does not run on faust, see docs/architecture.md).
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Iterable


class PartitionLedger:
    """Offsets of one partition that were handed to the worker, and which of them finished."""

    def __init__(self, start: int | None = None) -> None:
        # Next offset to commit if nothing is in flight; None until the first add().
        self._next: int | None = start
        self._pending: set[int] = set()
        self._heap: list[int] = []  # lowest pending offset on top (lazy deletion)
        self._committed: int | None = None

    def add(self, offset: int) -> None:
        """An offset was fetched and is now being worked on."""
        if offset in self._pending:
            raise ValueError(f"offset {offset} already in flight")
        self._pending.add(offset)
        heapq.heappush(self._heap, offset)
        if self._next is None or offset + 1 > self._next:
            self._next = offset + 1

    def finish(self, offset: int) -> None:
        """The worker is done with an offset (delivered, retried, bounced or skipped)."""
        if offset not in self._pending:
            raise KeyError(f"offset {offset} is not in flight")
        self._pending.remove(offset)
        while self._heap and self._heap[0] not in self._pending:
            heapq.heappop(self._heap)

    def committable(self) -> int | None:
        """The offset to commit: the lowest unfinished one, or one past the last seen offset when
        none is in flight; None before anything was added."""
        if self._heap:
            return self._heap[0]
        return self._next

    def in_flight(self) -> int:
        return len(self._pending)

    def is_pending(self, offset: int) -> bool:
        return offset in self._pending

    def needs_commit(self) -> int | None:
        """The committable offset if it moved since the last mark_committed()."""
        offset = self.committable()
        if offset is None or offset == self._committed:
            return None
        return offset

    def mark_committed(self, offset: int) -> None:
        self._committed = offset


class Ledger:
    """Ledgers of every partition currently assigned, keyed by partition (a TopicPartition)."""

    def __init__(self) -> None:
        self._parts: dict[Hashable, PartitionLedger] = {}

    def partition(self, tp: Hashable) -> PartitionLedger:
        part = self._parts.get(tp)
        if part is None:
            part = self._parts[tp] = PartitionLedger()
        return part

    def add(self, tp: Hashable, offset: int) -> None:
        self.partition(tp).add(offset)

    def finish(self, tp: Hashable, offset: int) -> bool:
        """Finish an offset; False when the partition was revoked meanwhile (nothing to do)."""
        part = self._parts.get(tp)
        if part is None or not part.is_pending(offset):
            return False
        part.finish(offset)
        return True

    def owns(self, tp: Hashable) -> bool:
        return tp in self._parts

    def revoke(self, tps: Iterable[Hashable]) -> None:
        """Forget revoked partitions: late finishes of their offsets no longer count."""
        for tp in tps:
            self._parts.pop(tp, None)

    def to_commit(self) -> dict[Hashable, int]:
        """Offsets that moved since the last commit, per partition."""
        out = {}
        for tp, part in self._parts.items():
            offset = part.needs_commit()
            if offset is not None:
                out[tp] = offset
        return out

    def to_commit_within(
        self, assigned: Iterable[Hashable], only: Iterable[Hashable] | None = None
    ) -> dict[Hashable, int]:
        """What to_commit() says for the partitions still assigned (and in `only`, if given):
        a revoked partition's offsets are its next owner's to commit."""
        keep = set(assigned) if only is None else set(assigned) & set(only)
        return {tp: off for tp, off in self.to_commit().items() if tp in keep}

    def committed(self, offsets: dict[Hashable, int]) -> None:
        for tp, offset in offsets.items():
            part = self._parts.get(tp)
            if part is not None:
                part.mark_committed(offset)

    def in_flight(self) -> int:
        return sum(p.in_flight() for p in self._parts.values())

    def partitions(self) -> list[Hashable]:
        return list(self._parts)
