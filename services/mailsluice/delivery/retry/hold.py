"""The records a retry mover holds until they are due: a due-ordered heap per partition.

A tier topic is not in due order: a throttled record goes to a tier with whatever wait its
destination needs (delivery/outcomes.py plan_throttled), so a record due in 5 s can follow one
due in 60 s. Waiting on a partition's head would hold the first behind the second, so every
fetched record sits in its partition's heap and leaves when due, in any offset order. Offsets
are tracked by the delivery worker's Ledger: a partition commits only up to its lowest offset
not yet moved, so a crash repeats moves (the worker's dedup absorbs them) but never skips one.

Memory is bounded twice: a partition holding `high` records is paused, and resumed when it is
down to `low` (hysteresis, so it does not flap on every record); and when all held records
together reach `high_bytes`, every partition pauses until they are down to half of that.

An operator's command on the control topic (control.py) releases held records of its
destination written to the tier topic before the command: `retry-now` all of them, `resume`
only those shaping deferred untried (the envelope's `held` says which), since a failure retry
waits for the remote, not for us, and keeps its schedule. Records deferred after the command
keep their due time. The release is remembered, so records of that destination not fetched yet
(a paused partition) are released when they arrive, and a restart, which replays the latest
command per destination, releases the same records again — already moved ones are committed and
never come back.

A released record's copy is due at once, so its envelope is rewritten (`moved_headers`): the
worker holds a record until its not_before, and the old one would send it straight back to a
delay topic; and a shaping hold's text, now over, must not read as the message's last error.

Plain data, no Kafka: the mover passes the wall clock in (`now`), so tests drive time.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

from mailsluice.contracts.envelope import (
    ENVELOPE_HEADER,
    Envelope,
    decode_envelope,
    encode_envelope,
    envelope_from_headers,
)
from mailsluice.contracts.routing import base_of
from mailsluice.contracts.topics import queue_topic
from mailsluice.kafka.ledger import Ledger

log = logging.getLogger(__name__)

DEFAULT_HIGH = 1000
DEFAULT_HIGH_BYTES = 256 * 1024 * 1024
# A paused partition resumes when it holds this fraction of `high` or less.
RESUME_FRACTION = 0.5


@dataclass(eq=False)
class Held:
    """One fetched tier record. `topic` None marks an undecodable record (moved nowhere, but
    finished so the partition can commit past it)."""

    tp: Hashable
    offset: int
    due: float  # epoch seconds (the envelope's not_before)
    topic: str | None = None  # the pool's queue topic to move it to
    pool: str = ""
    key: str = ""  # routing key
    written: float = 0.0  # epoch seconds the record was written to the tier topic
    record: Any = None  # the Kafka record, opaque here
    released: bool = field(default=False)  # made due early by a resume or retry-now command
    size: int = 0  # bytes it takes in memory (value, key, headers)
    shaping: str = ""  # the envelope's `held`: the hold that deferred it ("": a failure retry)


def tier_of(topic: str) -> str:
    return topic.rsplit(".", 1)[-1]


def held_from_record(tp: Hashable, record: Any) -> Held:
    """A fetched tier record as the hold sees it; an undecodable one is kept only to be
    skipped (finished without a move), never a crash loop."""
    written = record.timestamp / 1000 if record.timestamp and record.timestamp > 0 else 0.0
    size = len(record.value or b"") + len(record.key or b"")
    size += sum(len(value or b"") for _name, value in record.headers or ())
    try:
        env = envelope_from_headers(record.headers)
    except ValueError as exc:
        log.error("skipping undecodable retry record at %s: %s", record.offset, exc)
        return Held(tp, record.offset, 0.0, None, written=written, record=record, size=size)
    return Held(
        tp,
        record.offset,
        env.not_before,
        queue_topic(env.pool),
        env.pool,
        env.routing_key,
        written,
        record,
        size=size,
        shaping=env.held,
    )


def released_envelope(env: Envelope, now: float) -> Envelope:
    """The envelope of a released record's copy: due `now`, no longer held, and its last error
    kept only when it is a remote's reply (a failure retry), not the text of a lifted hold."""
    return env.model_copy(
        update={"not_before": now, "held": "", "last_error": "" if env.held else env.last_error}
    )


def moved_headers(held: Held, now: float) -> list[tuple[str, bytes]]:
    """The headers of a record's copy on its queue topic: as they were for a record moved when
    due, with the envelope rewritten (released_envelope) for a released one."""
    headers = list(held.record.headers or ())
    if not held.released:
        return headers
    for i, (name, value) in enumerate(headers):
        if name == ENVELOPE_HEADER:
            env = released_envelope(decode_envelope(value), now)
            headers[i] = (name, encode_envelope(env))
            break
    return headers


class RetryHold:
    """Held records of every assigned partition, the offset ledger and the pause decisions."""

    def __init__(
        self, *, high: int = DEFAULT_HIGH, low: int | None = None, high_bytes: int = 0
    ) -> None:
        if high < 1:
            raise ValueError("high must be >= 1")
        self.high = high
        self.low = max(0, int(high * RESUME_FRACTION)) if low is None else min(low, high - 1)
        self.high_bytes = high_bytes or DEFAULT_HIGH_BYTES
        self.low_bytes = int(self.high_bytes * RESUME_FRACTION)
        self._bytes: dict[Hashable, int] = {}
        self._over: set[Hashable] = set()  # partitions at their record bound
        self._full = False  # all held records together at the byte bound
        self.ledger = Ledger()
        self._heaps: dict[Hashable, list[tuple[float, int, Held]]] = {}
        self._tie = itertools.count()  # equal due times leave in fetch order
        # (pool, key) -> time of the latest command: retry-now releases every held record,
        # resume only the shaping-held ones
        self._retry_now: dict[tuple[str, str], float] = {}
        self._resumed: dict[tuple[str, str], float] = {}
        self._paused: set[Hashable] = set()

    # --- records in and out ---------------------------------------------------------------------

    def add(self, held: Held) -> bool:
        """A record was fetched: hold it until due (or release it now when a command covers
        it). False for an offset already held (fetched twice), which is ignored."""
        if self.ledger.owns(held.tp) and self.ledger.partition(held.tp).is_pending(held.offset):
            return False
        self.ledger.add(held.tp, held.offset)
        self._bytes[held.tp] = self._bytes.get(held.tp, 0) + held.size
        if self._covered(held):
            held.released = True
        self._push(held)
        return True

    def take_due(self, now: float) -> list[Held]:
        """Every held record due at `now`, by partition then due time; they stay unfinished in
        the ledger until done() (or put_back() when the move failed)."""
        out: list[Held] = []
        for heap in self._heaps.values():
            while heap and heap[0][0] <= now:
                out.append(heapq.heappop(heap)[2])
        return out

    def done(self, held: Held) -> bool:
        """The record's copy is acknowledged on its queue topic (or it was undecodable): its
        offset may be committed. False when its partition was revoked meanwhile."""
        if not self.ledger.finish(held.tp, held.offset):
            return False
        self._bytes[held.tp] -= held.size
        return True

    def put_back(self, held: Iterable[Held]) -> None:
        """A move failed: hold the records again (still due, so the next round retries them)."""
        for h in held:
            if self.ledger.owns(h.tp) and self.ledger.partition(h.tp).is_pending(h.offset):
                self._push(h)

    def _push(self, held: Held) -> None:
        due = float("-inf") if held.released or held.topic is None else held.due
        heapq.heappush(self._heaps.setdefault(held.tp, []), (due, next(self._tie), held))

    # --- resume and retry now ------------------------------------------------------------------

    def release(self, pool: str, key: str, before: float, *, shaped_only: bool = False) -> int:
        """A command for (pool, key) issued at `before`: records of that destination written up
        to then become due now; with `shaped_only` (resume) only those a shaping hold deferred.
        Returns how many held records it released."""
        mark = (pool, base_of(key))  # a provider's command covers its shards
        marks = self._resumed if shaped_only else self._retry_now
        if marks.get(mark, float("-inf")) >= before:
            return 0
        marks[mark] = before
        released = 0
        for heap in self._heaps.values():
            hit = [entry for entry in heap if not entry[2].released and self._covered(entry[2])]
            if not hit:
                continue
            for _due, _tie, held in hit:
                held.released = True
            released += len(hit)
            heap[:] = [(float("-inf") if e[2].released else e[0], e[1], e[2]) for e in heap]
            heapq.heapify(heap)
        return released

    def _covered(self, held: Held) -> bool:
        if held.topic is None:
            return False
        mark = (held.pool, base_of(held.key))
        if held.written <= self._retry_now.get(mark, float("-inf")):
            return True
        return bool(held.shaping) and held.written <= self._resumed.get(mark, float("-inf"))

    # --- partitions -----------------------------------------------------------------------------

    def revoke(self, tps: Iterable[Hashable]) -> int:
        """Forget revoked partitions (commit what to_commit() gives for them first); returns
        the number of records dropped, which the next owner fetches again."""
        dropped = 0
        gone = list(tps)
        for tp in gone:
            if self.ledger.owns(tp):
                dropped += self.ledger.partition(tp).in_flight()
            self._heaps.pop(tp, None)
            self._bytes.pop(tp, None)
            self._over.discard(tp)
            self._paused.discard(tp)
        self.ledger.revoke(gone)
        return dropped

    def flow(self) -> tuple[list[Hashable], list[Hashable]]:
        """Partitions to pause now and to resume: a partition pauses at `high` records and
        resumes at `low`; all pause at `high_bytes` held in total and resume at half."""
        total = self.bytes()
        if self._full and total <= self.low_bytes:
            self._full = False
        elif not self._full and total >= self.high_bytes:
            self._full = True
        parts = self.ledger.partitions()
        for tp in parts:
            count = self.count(tp)
            if count >= self.high:
                self._over.add(tp)
            elif count <= self.low:
                self._over.discard(tp)
        want = set(parts) if self._full else set(self._over)
        pause = [tp for tp in parts if tp in want and tp not in self._paused]
        resume = [tp for tp in parts if tp in self._paused and tp not in want]
        self._paused = want
        return pause, resume

    def paused(self) -> set[Hashable]:
        return set(self._paused)

    # --- offsets and figures --------------------------------------------------------------------

    def to_commit(self, only: Iterable[Hashable] | None = None) -> dict[Hashable, int]:
        offsets = self.ledger.to_commit()
        if only is not None:
            keep = set(only)
            offsets = {tp: off for tp, off in offsets.items() if tp in keep}
        return offsets

    def committed(self, offsets: dict[Hashable, int]) -> None:
        self.ledger.committed(offsets)

    def first_unmoved(self, tp: Hashable) -> int | None:
        """Lowest offset of the partition not moved yet (None when none is held)."""
        if not self.ledger.owns(tp) or self.ledger.partition(tp).in_flight() == 0:
            return None
        return self.ledger.partition(tp).committable()

    def count(self, tp: Hashable | None = None) -> int:
        """Records held (waiting or being moved), of one partition or all."""
        if tp is None:
            return self.ledger.in_flight()
        return self.ledger.partition(tp).in_flight() if self.ledger.owns(tp) else 0

    def bytes(self) -> int:
        """Bytes of all held records."""
        return sum(self._bytes.values())

    def counts(self) -> dict[Hashable, int]:
        return {tp: self.count(tp) for tp in self.ledger.partitions()}

    def by_destination(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(pool, routing key) -> (held by a shaping hold, failure retries) of the records
        waiting here (those being moved right now are not counted: they are due)."""
        out: dict[tuple[str, str], tuple[int, int]] = {}
        for heap in self._heaps.values():
            for _due, _tie, held in heap:
                if held.topic is None:
                    continue
                shaped, failed = out.get((held.pool, held.key), (0, 0))
                if held.shaping:
                    shaped += 1
                else:
                    failed += 1
                out[(held.pool, held.key)] = (shaped, failed)
        return out

    def next_due(self) -> float | None:
        """Earliest due time of any waiting record (-inf when one is due regardless of time)."""
        heads = [heap[0][0] for heap in self._heaps.values() if heap]
        return min(heads) if heads else None
