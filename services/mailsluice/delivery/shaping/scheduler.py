"""Per-destination scheduling: in-memory queues per routing key under concurrency and rate limits.

A destination over its limits never holds up another: each routing key has its own queue, and a
message that would wait longer than a short horizon leaves memory for a delay topic. Within a
destination, any ready message may start (transactional first, then by ready time and arrival):
a retried message due later never blocks the ready ones behind it. Limits come
from a policy lookup per routing key; the shaping engine (issue 4) extends `Shaper` with policy
files, warm-up caps and adaptive backoff by overriding `limits()` and `observe()`.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from mailsluice.delivery.shaping.limiter import Gcra, Rate

T = TypeVar("T")


@dataclass(frozen=True)
class DestinationLimits:
    max_concurrency: int = 10
    rate: float = 100.0  # messages per second; math.inf for no rate limit
    burst: int = 10  # messages that may go back to back before the rate applies

    def __post_init__(self) -> None:
        if self.max_concurrency < 1 or self.rate <= 0 or self.burst < 1:
            raise ValueError(f"invalid destination limits {self}")

    def as_rate(self) -> Rate:
        return Rate(self.rate, 1.0, self.burst)


PolicyLookup = Callable[[str], DestinationLimits]


def static_policy(limits: DestinationLimits) -> PolicyLookup:
    return lambda _key: limits


@dataclass
class _DestState:
    limits: DestinationLimits
    gcra: Gcra
    active: int = 0


class Shaper:
    """Concurrency and rate per routing key, with limits from a policy lookup."""

    def __init__(self, policy: PolicyLookup) -> None:
        self._policy = policy
        self._dests: dict[str, _DestState] = {}

    def limits(self, key: str) -> DestinationLimits:
        return self._policy(key)

    def _state(self, key: str) -> _DestState:
        state = self._dests.get(key)
        if state is None:
            limits = self.limits(key)
            state = self._dests[key] = _DestState(limits, Gcra(limits.as_rate()))
        return state

    def refresh(self, key: str) -> None:
        """Re-read the policy for a destination (after a policy change)."""
        state = self._state(key)
        limits = self.limits(key)
        if limits != state.limits:
            state.limits = limits
            state.gcra.configure(limits.as_rate())

    def wait_time(self, key: str, now: float) -> float:
        """0.0 when a send may start now; inf while the destination's connections are all busy
        (a finish wakes it); otherwise seconds until the rate allows one."""
        state = self._state(key)
        if state.active >= state.limits.max_concurrency:
            return math.inf
        return state.gcra.wait_time(now)

    def try_start(self, key: str, now: float) -> bool:
        state = self._state(key)
        if state.active >= state.limits.max_concurrency or not state.gcra.try_acquire(now):
            return False
        state.active += 1
        return True

    def finished(self, key: str, now: float) -> None:
        state = self._dests.get(key)
        if state is not None and state.active > 0:
            state.active -= 1

    def estimate_wait(self, key: str, now: float, queued: int) -> float:
        """Seconds a new message behind `queued` others would wait under the rate limit."""
        return self._state(key).gcra.backlog_time(now, queued)

    def observe(self, key: str, now: float, codes: list[tuple[int, str, str]]) -> None:
        """Hook for adaptive backoff: (code, enhanced, text) of each result of a send."""

    def should_bounce(self, key: str, reply: tuple[int, str, str]) -> bool:
        """Hook for bounce rules: True turns this transient reply into a bounce."""
        return False

    def provider(self, key: str) -> str | None:
        """The policy provider a destination rolls up to (None: none, or no policy)."""
        return None

    def overflow_pool(self, key: str, now: float, queued: int) -> str:
        """The pool a message behind `queued` others goes to instead of waiting (warm-up cap
        spent and overflow configured); "" to wait."""
        return ""

    def active(self, key: str) -> int:
        state = self._dests.get(key)
        return state.active if state else 0

    def forget_idle(self, now: float, keep: Iterable[str] = ()) -> None:
        """Drop state of destinations with nothing active and full credit (bounds memory)."""
        keep_set = set(keep)
        for key in [
            k
            for k, s in self._dests.items()
            if k not in keep_set and s.active == 0 and s.gcra.idle(now)
        ]:
            del self._dests[key]

    def __len__(self) -> int:
        return len(self._dests)


@dataclass(eq=False)
class Job(Generic[T]):
    key: str
    item: T
    enqueued: float
    ready_at: float
    # Set when the job left its queue (started, overdue or removed): the queue's heaps and
    # arrival order drop it lazily.
    gone: bool = field(default=False, repr=False)


@dataclass
class Deferral(Generic[T]):
    """A job leaving memory for a delay topic, due again in `wait` seconds; or, when
    `overflow_pool` is set, for that pool's queue (its warm-up cap is spent)."""

    job: Job[T]
    wait: float
    overflow_pool: str = ""


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
    """Per-destination queues in front of a Shaper. Times are monotonic seconds."""

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
        return Deferral(job, wait, self.shaper.overflow_pool(job.key, now, queued))

    def push(
        self, key: str, item: T, now: float, ready_at: float | None = None
    ) -> Deferral[T] | None:
        """Queue a job; or, when it would wait longer than the horizon, hand it back as a
        Deferral (the caller sends it to a delay topic, or to the overflow pool)."""
        job = Job(key, item, now, now if ready_at is None else ready_at)
        urgent = self._is_urgent(item)
        q = self._queues.get(key)
        ahead = 0 if q is None else q.live_urgent if urgent else len(q)
        wait = max(job.ready_at - now, self.shaper.estimate_wait(key, now, ahead))
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
            while (job := q.ready(now)) is not None and self.shaper.try_start(key, now):
                q.take(job, self._is_urgent(job.item))
                started.append(job)
                self._count -= 1
            if not q:
                del self._queues[key]
        return started

    def done(self, job: Job[T], now: float) -> None:
        self.shaper.finished(job.key, now)

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

    def __iter__(self) -> Iterator[Job[T]]:
        for q in self._queues.values():
            yield from q.jobs()
