"""What the controller measures: the accepted rate over a sliding window, and what deferrals
prove about the provider's refill rate.

Both keep a fixed amount of memory whatever the rate: the meter a ring of slots, the bounds a
few recent deferral times.
"""

from __future__ import annotations

import math
from collections import deque


class Meter:
    """Accepted sends per second, over the last window or, when that holds too few to be a
    rate, over the last `enough` of them: a fixed ring of slots plus their times."""

    SLOTS = 10

    def __init__(self, window: float, enough: int) -> None:
        self.width = window / self.SLOTS
        self._index = [-1] * self.SLOTS
        self._count = [0] * self.SLOTS
        self._last: deque[float] = deque(maxlen=max(2, enough))

    def add(self, at: float) -> None:
        index = math.floor(at / self.width)
        slot = index % self.SLOTS
        if self._index[slot] != index:
            self._index[slot], self._count[slot] = index, 0
        self._count[slot] += 1
        self._last.append(at)

    def rate(self, now: float, since: float) -> float:
        """Accepted per second since `since`: over at most the window (whole slots, divided by
        the time they really cover) or, when the window holds too few, over the last `enough`."""
        last = math.floor(now / self.width)
        span = min(self.SLOTS * self.width, max(now - since, 1e-9))
        first = last - min(self.SLOTS, max(1, math.ceil(span / self.width - 1e-9))) + 1
        count = sum(c for i, c in zip(self._index, self._count, strict=True) if first <= i <= last)
        times, covered = self._last, max(now - first * self.width, self.width)
        if count + 1 >= (times.maxlen or 0):
            return count / covered
        if len(times) == times.maxlen and times[0] >= since:
            return (len(times) - 1) / max(now - times[0], self.width)
        return (count + 1) / covered  # a handful: one more is as likely as one fewer


class Bounds:
    """Bounds on a provider's refill rate r from when its bucket was seen empty.

    A deferral means the source had less than one token. Between two such moments t0 < t the
    provider handed out at most r * (t - t0) tokens plus the part token left at t0, so the
    messages accepted in between, a, prove r > (a - 1) / (t - t0) however large the bucket and
    whatever it overflowed. The first deferral of each episode is kept as a base; the bound
    from the best base is a ceiling the burst of a bucket cannot inflate. Inside one episode
    (deferrals close together, the bucket never refilled) (a + 1) / (t - t0) bounds r from
    above as well.
    """

    def __init__(self, gap: float, keep: int = 8) -> None:
        self.gap = gap  # deferrals further apart than this start a new episode
        self.total = 0  # messages accepted so far
        # (time, accepted then plus sends in flight then): in-flight sends may still be
        # accepted on tokens taken before the base, so they never count for the bound.
        self._bases: deque[tuple[float, int, int]] = deque(maxlen=keep)
        self._last = -math.inf

    def accepted(self) -> None:
        self.total += 1

    def deferred(self, at: float, in_flight: int) -> None:
        if at - self._last > self.gap:
            self._bases.append((at, self.total, in_flight))
        self._last = at

    def lower(self, now: float, min_span: float, min_count: int) -> float | None:
        """The best proven lower bound on r (None: no base old enough, or with too few
        messages since, to tell: with a handful the token left over blurs it)."""
        best = None
        for at, count, in_flight in self._bases:
            accepted = self.total - count - in_flight
            if now - at >= min_span and accepted >= min_count:
                bound = (accepted - 1) / (now - at)
                best = bound if best is None else max(best, bound)
        return best

    def upper(self, now: float, min_span: float) -> float | None:
        """An upper bound on r from the current episode's start, while that is recent (None:
        no episode, or old enough that the bucket may have refilled since)."""
        if not self._bases or now - self._last > self.gap:
            return None
        at, count, _ = self._bases[-1]
        if not 0 < now - at < min_span:
            return None
        return (self.total - count + 1) / (now - at)

    def episode(self, now: float) -> tuple[int, float] | None:
        """Messages accepted and seconds elapsed since the current episode's first deferral
        (None: no episode going on)."""
        if not self._bases or now - self._last > self.gap:
            return None
        at, count, _ = self._bases[-1]
        return self.total - count, now - at
