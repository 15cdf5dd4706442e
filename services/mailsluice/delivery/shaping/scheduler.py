"""Per-destination scheduling: in-memory queues per routing key under concurrency and rate limits.

A destination over its limits never holds up another: each routing key has its own queue, and a
message that would wait longer than a short horizon leaves memory for a delay topic. Within a
destination, any ready message may start (transactional first, then by ready time and arrival):
a retried message due later never blocks the ready ones behind it. When a message may start is
the shaper's answer (`Shaper`, implemented by engine.PolicyShaper: policy rates, adaptive
backoff, warm-up caps).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

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

    def why_held(self, key: str, now: float) -> tuple[str, str]:
        """Why a message of `key` leaves memory: (envelope `held`, error text)."""
        ...

    def overflow_pool(self, key: str, now: float, queued: int) -> str:
        """The pool a message behind `queued` others goes to instead of waiting; "" to wait."""
        ...

    def forget_idle(self, now: float, keep: Iterable[str] = ()) -> None:
        """Drop the state of idle destinations not in `keep` (bounds memory)."""
        ...


@dataclass(eq=False)
class Job(Generic[T]):
    key: str
    item: T
    enqueued: float
    ready_at: float
    # The source address the job is sent from ("": the transport's first configured one).
    source: str = ""
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


class _Queue(Generic[T]):
    """One destination's jobs: a heap per class (urgent first) ordered by (ready_at, arrival),
    so a head that is not ready yet (a retry with a later not_before) never holds up a ready
    job; plus the arrival order, for jobs that waited past the horizon."""

    def __init__(self) -> None:
        self.urgent: list[_Entry[T]] = []
        self.normal: list[_Entry[T]] = []
        self.arrival: deque[Job[T]] = deque()
        self.live_urgent = 0
        self.live_normal = 0

    def __len__(self) -> int:
        return self.live_urgent + self.live_normal

    def push(self, job: Job[T], seq: int, urgent: bool) -> None:
        heapq.heappush(self.urgent if urgent else self.normal, (job.ready_at, seq, job))
        self.arrival.append(job)
        if urgent:
            self.live_urgent += 1
        else:
            self.live_normal += 1

    @staticmethod
    def _top(heap: list[_Entry[T]]) -> Job[T] | None:
        while heap and heap[0][2].gone:
            heapq.heappop(heap)
        return heap[0][2] if heap else None

    def ready(self, now: float) -> Job[T] | None:
        """The job to start next: the earliest ready urgent one, else the earliest ready other."""
        for heap in (self.urgent, self.normal):
            job = self._top(heap)
            if job is not None and job.ready_at <= now:
                return job
        return None

    def earliest_ready(self) -> float:
        tops = [j.ready_at for j in (self._top(self.urgent), self._top(self.normal)) if j]
        return min(tops, default=math.inf)

    def oldest(self) -> Job[T] | None:
        while self.arrival and self.arrival[0].gone:
            self.arrival.popleft()
        return self.arrival[0] if self.arrival else None

    def take(self, job: Job[T], urgent: bool) -> None:
        """Remove a live job (it is then dropped lazily from the heap and the arrival order)."""
        job.gone = True
        if urgent:
            self.live_urgent -= 1
        else:
            self.live_normal -= 1

    def jobs(self) -> Iterator[Job[T]]:
        """Live jobs in the order they would start if all were ready."""
        for heap in (self.urgent, self.normal):
            yield from (e[2] for e in sorted(heap) if not e[2].gone)


@dataclass
class Scheduler(Generic[T]):
    """Per-destination queues in front of a shaper. Times are monotonic seconds."""

    shaper: Shaper
    horizon: float
    # Items for which this is true (transactional mail) go ahead of the others in their
    # destination's queue, so they get the first claim on its rate.
    urgent: Callable[[T], bool] | None = None
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
        held, reason = self.shaper.why_held(job.key, now)
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
        q = self._queues.get(key)
        ahead = 0 if q is None else q.live_urgent if urgent else len(q)
        wait = job.ready_at - now
        if not slotted:
            wait = max(wait, self.shaper.estimate_wait(key, now, ahead))
        if not slotted and not urgent:
            # behind the messages that already left to wait for their slots
            wait = max(wait, self.shaper.reserved_until(key) - now)
        if wait > self.horizon:
            return self._deferral(job, wait, now, ahead)
        q = self._queues.setdefault(key, _Queue())
        self._seq += 1
        q.push(job, self._seq, urgent)
        self._count += 1
        return None

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
