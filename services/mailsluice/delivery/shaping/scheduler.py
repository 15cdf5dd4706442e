"""Per-destination scheduling: in-memory queues per routing key under concurrency and rate limits.

A destination over its limits never holds up another: each routing key has its own queue, and a
message that would wait longer than a short horizon leaves memory for a delay topic. Within a
destination, any ready message may start (transactional first, then by ready time and arrival):
a retried message due later never blocks the ready ones behind it. When a message may start is
the shaper's answer (`Shaper`, implemented by engine.PolicyShaper: policy rates, adaptive
backoff, warm-up caps).

While a destination's sends are rationed by a warm-up cap, its queue ranks ready jobs by their
`rank` (the envelope's engagement grade) before arrival, within each class: the cap goes to the
most engaged recipients. A ranked job that would leave memory displaces the lowest-ranked queued
one instead (which leaves in its place), and a new queue of such a destination gathers for
`gather` seconds before its first start, so a fetched backlog is ranked before it is spent.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

T = TypeVar("T")


class Shaper(Protocol):
    """What the scheduler asks per routing key (engine.PolicyShaper answers). `now` is the
    scheduler's monotonic clock."""

    def wait_time(self, key: str, now: float) -> float:
        """0.0 when a send may start now; inf while the destination's connections are all busy
        (a finish wakes it); otherwise seconds until one may."""
        ...

    def try_start(self, key: str, now: float) -> str | None:
        """Take a send slot (rate and connection) if one is free now: the source address
        the send goes out from; None when none is free."""
        ...

    def finished(self, key: str, source: str, now: float) -> None:
        """A send that try_start allowed from `source` is over: its connection is free."""
        ...

    def estimate_wait(self, key: str, now: float, queued: int) -> float:
        """Seconds a new message behind `queued` others would wait."""
        ...

    def reserve(self, key: str, now: float, wait: float) -> float:
        """A message leaves memory to wait at least `wait` seconds: its slot, as a wait (later
        than `wait` when others left before it)."""
        ...

    def reserved_until(self, key: str) -> float:
        """The last slot given to a message that left memory (0.0: none)."""
        ...

    def why_held(self, key: str, now: float, queued: int = 0) -> tuple[str, str]:
        """Why a message of `key` behind `queued` others leaves memory: (envelope `held`,
        error text)."""
        ...

    def overflow_pool(self, key: str, now: float, queued: int) -> str:
        """The pool a message behind `queued` others goes to instead of waiting; "" to wait."""
        ...

    def forget_idle(self, now: float, keep: Iterable[str] = ()) -> None:
        """Drop the state of idle destinations not in `keep` (bounds memory)."""
        ...

    def rationed(self, key: str, now: float) -> bool:
        """Whether every send to `key` counts against a warm-up cap now (every address of the
        pool is warming): its queue then ranks jobs by engagement."""
        ...


@dataclass(eq=False)
class Job(Generic[T]):
    key: str
    item: T
    enqueued: float
    ready_at: float
    # The source address the job is sent from ("": the transport's first configured one).
    source: str = ""
    # Higher starts first among ready jobs of its class (0 for all: arrival order).
    rank: int = 0
    # Set when the job left its queue (started, overdue or removed): the queue's heaps and
    # arrival order drop it lazily.
    gone: bool = field(default=False, repr=False)


@dataclass
class Deferral(Generic[T]):
    """A job leaving memory for a delay topic, due again in `wait` seconds; or, when
    `overflow_pool` is set, for that pool's queue (its warm-up cap is spent). `held` names the
    hold (the envelope's `held`: "suspended", "blocked", "throttled", "warmup") and `reason`
    is the error text its record carries ("": the worker's text for the hold)."""

    job: Job[T]
    wait: float
    overflow_pool: str = ""
    held: str = "throttled"
    reason: str = ""


_Entry = tuple[float, int, Job[T]]
_Ranked = tuple[int, float, int, Job[T]]


class _Class(Generic[T]):
    """The jobs of one class (urgent or not) of a destination: those not ready yet by
    (ready_at, arrival); the ready ones by (rank, ready_at, arrival), so a head that is not
    ready yet (a retry with a later not_before) never holds up a ready job; and, for
    displacement, the lowest rank and latest arrival first."""

    def __init__(self) -> None:
        self.waiting: list[_Entry[T]] = []
        self.ready: list[_Ranked[T]] = []
        self.worst: list[tuple[int, int, Job[T]]] = []
        self.live = 0

    def push(self, job: Job[T], seq: int) -> None:
        heapq.heappush(self.waiting, (job.ready_at, seq, job))
        heapq.heappush(self.worst, (job.rank, -seq, job))
        self.live += 1
        if len(self.worst) > 2 * self.live + 64:
            # its best jobs start first and stay at its bottom: drop them now and then
            self.worst = [e for e in self.worst if not e[2].gone]
            heapq.heapify(self.worst)

    def top(self, now: float) -> Job[T] | None:
        """The best ready job (None: none is ready)."""
        while self.waiting and (self.waiting[0][2].gone or self.waiting[0][0] <= now):
            ready_at, seq, job = heapq.heappop(self.waiting)
            if not job.gone:
                heapq.heappush(self.ready, (-job.rank, ready_at, seq, job))
        return _live(self.ready)

    def earliest(self) -> float:
        if _live(self.ready) is not None:
            return -math.inf
        head = _live(self.waiting)
        return math.inf if head is None else head.ready_at

    def lowest(self) -> Job[T] | None:
        return _live(self.worst)

    def jobs(self) -> list[Job[T]]:
        live = [e for e in self.ready if not e[3].gone]
        live += [(-e[2].rank, *e) for e in self.waiting if not e[2].gone]
        return [e[3] for e in sorted(live, key=lambda e: e[:3])]


def _live(heap: list[Any]) -> Job[Any] | None:
    """The heap's top job, dropping those gone (each entry's last element is its job)."""
    while heap and heap[0][-1].gone:
        heapq.heappop(heap)
    return heap[0][-1] if heap else None


class _Queue(Generic[T]):
    """One destination's jobs: a class each for urgent and other jobs (urgent first), plus the
    arrival order, for jobs that waited past the horizon."""

    def __init__(self, hold_until: float = 0.0) -> None:
        self.urgent: _Class[T] = _Class()
        self.normal: _Class[T] = _Class()
        self.arrival: deque[Job[T]] = deque()
        # no start before this (a rationed destination gathering its backlog to rank it)
        self.hold_until = hold_until

    @property
    def live_urgent(self) -> int:
        return self.urgent.live

    def __len__(self) -> int:
        return self.urgent.live + self.normal.live

    def push(self, job: Job[T], seq: int, urgent: bool) -> None:
        (self.urgent if urgent else self.normal).push(job, seq)
        self.arrival.append(job)

    def ready(self, now: float) -> Job[T] | None:
        """The job to start next: the best ready urgent one, else the best ready other."""
        if now < self.hold_until:
            return None
        return self.urgent.top(now) or self.normal.top(now)

    def earliest_ready(self) -> float:
        return max(self.hold_until, min(self.urgent.earliest(), self.normal.earliest()))

    def oldest(self) -> Job[T] | None:
        while self.arrival and self.arrival[0].gone:
            self.arrival.popleft()
        return self.arrival[0] if self.arrival else None

    def take(self, job: Job[T], urgent: bool) -> None:
        """Remove a live job (it is then dropped lazily from the heaps and the arrival order)."""
        job.gone = True
        (self.urgent if urgent else self.normal).live -= 1

    def jobs(self) -> Iterator[Job[T]]:
        """Live jobs in the order they would start if all were ready."""
        yield from self.urgent.jobs()
        yield from self.normal.jobs()


@dataclass
class Scheduler(Generic[T]):
    """Per-destination queues in front of a shaper. Times are monotonic seconds."""

    shaper: Shaper
    horizon: float
    # Items for which this is true (transactional mail) go ahead of the others in their
    # destination's queue, so they get the first claim on its rate.
    urgent: Callable[[T], bool] | None = None
    # An item's rank (its engagement grade) while its destination is rationed by a warm-up cap.
    rank: Callable[[T], int] | None = None
    # Seconds a new queue of a rationed destination waits before its first start.
    gather: float = 0.0
    _queues: dict[str, _Queue[T]] = field(default_factory=dict)
    _count: int = 0
    _seq: int = 0

    def __len__(self) -> int:
        return self._count

    def queued(self, key: str) -> int:
        q = self._queues.get(key)
        return len(q) if q else 0

    def keys(self) -> list[str]:
        return list(self._queues)

    def _is_urgent(self, item: T) -> bool:
        return self.urgent is not None and self.urgent(item)

    def _deferral(self, job: Job[T], wait: float, now: float, queued: int) -> Deferral[T]:
        pool = self.shaper.overflow_pool(job.key, now, queued)
        if pool:
            return Deferral(job, wait, pool)
        held, reason = self.shaper.why_held(job.key, now, queued)
        return Deferral(job, self.shaper.reserve(job.key, now, wait), "", held, reason)

    def push(
        self,
        key: str,
        item: T,
        now: float,
        ready_at: float | None = None,
        *,
        slotted: bool = False,
    ) -> Deferral[T] | None:
        """Queue a job; or, when it would wait longer than the horizon, hand it back as a
        Deferral (the caller sends it to a delay topic, or to the overflow pool). A `slotted`
        job comes back from a delay topic at the slot it was given: it waits for its ready
        time, not behind the messages that left after it."""
        job = Job(key, item, now, now if ready_at is None else ready_at)
        urgent = self._is_urgent(item)
        rationed = False
        if self.rank is not None and self.shaper.rationed(key, now):
            rationed, job.rank = True, self.rank(item)
        q = self._queues.get(key)
        ahead = 0 if q is None else q.live_urgent if urgent else len(q)
        wait = job.ready_at - now
        if not slotted:
            wait = max(wait, self.shaper.estimate_wait(key, now, ahead))
        if not slotted and not urgent:
            # behind the messages that already left to wait for their slots
            wait = max(wait, self.shaper.reserved_until(key) - now)
        if wait > self.horizon:
            lowest = q.normal.lowest() if q is not None and not urgent else None
            if q is None or lowest is None or lowest.rank >= job.rank:
                return self._deferral(job, wait, now, ahead)
            # the engaged go first: the lowest-ranked queued job leaves in its place
            q.take(lowest, False)
            self._count -= 1
            self._queue(key, now, rationed).push(job, self._next_seq(), urgent)
            self._count += 1
            return self._deferral(lowest, wait, now, ahead)
        self._queue(key, now, rationed).push(job, self._next_seq(), urgent)
        self._count += 1
        return None

    def _queue(self, key: str, now: float, rationed: bool) -> _Queue[T]:
        q = self._queues.get(key)
        if q is None:
            q = self._queues[key] = _Queue(now + self.gather if rationed else 0.0)
        return q

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def take(self, now: float) -> list[Job[T]]:
        """Jobs that may start now; each counts against its destination until done()."""
        started: list[Job[T]] = []
        for key in list(self._queues):
            q = self._queues[key]
            while (job := q.ready(now)) is not None:
                source = self.shaper.try_start(key, now)
                if source is None:
                    break
                job.source = source
                q.take(job, self._is_urgent(job.item))
                started.append(job)
                self._count -= 1
            if not q:
                del self._queues[key]
        return started

    def done(self, job: Job[T], now: float) -> None:
        self.shaper.finished(job.key, job.source, now)

    def overdue(self, now: float) -> list[Deferral[T]]:
        """Jobs that waited longer than the horizon (e.g. all connections of their destination
        are stuck on a slow server): they leave memory for a delay topic."""
        out: list[Deferral[T]] = []
        for key in list(self._queues):
            q = self._queues[key]
            while (job := q.oldest()) is not None and now - job.enqueued > self.horizon:
                q.take(job, self._is_urgent(job.item))
                self._count -= 1
                wait = max(self.horizon, self.shaper.estimate_wait(key, now, len(q)))
                out.append(self._deferral(job, wait, now, len(q)))
            if not q:
                del self._queues[key]
        return out

    def next_wake(self, now: float) -> float:
        """Seconds until take() may return something new without a done() (inf: nothing)."""
        best = math.inf
        for key, q in self._queues.items():
            oldest = q.oldest()
            if oldest is None:
                continue
            wait = max(q.earliest_ready() - now, self.shaper.wait_time(key, now))
            best = min(best, wait, oldest.enqueued + self.horizon - now)
        return max(0.0, best)

    def remove(self, keep: Callable[[T], bool]) -> list[T]:
        """Drop queued jobs whose item fails `keep` (revoked partitions); return their items."""
        dropped: list[T] = []
        for key in list(self._queues):
            q = self._queues[key]
            for job in list(q.jobs()):
                if not keep(job.item):
                    q.take(job, self._is_urgent(job.item))
                    self._count -= 1
                    dropped.append(job.item)
            if not q:
                del self._queues[key]
        return dropped

    def forget_idle(self, now: float) -> None:
        """Let the shaper drop idle destinations, keeping those with queued jobs."""
        self.shaper.forget_idle(now, keep=self._queues)

    def __iter__(self) -> Iterator[Job[T]]:
        for q in self._queues.values():
            yield from q.jobs()
