"""The provider's token bucket, fitted to what this source had accepted and when it was deferred.

Providers count per source IP with a bucket: `burst` messages at once, refilled at `rate`. A
deferral means the bucket was empty at that moment. Between two such moments the accepted
messages are what the refill handed out, less what a full bucket let overflow; how much
overflowed depends on the burst. So the rate needs the burst, and the burst needs a moment the
bucket was known full: the start of sending to a destination nothing was sent to for a while.
The first deferral after that start gives the burst for every candidate rate (the most that
was accepted above the refill over any stretch before it); the next deferral, one episode
later, picks the rate whose bucket, starting empty at the end of the first episode, is empty
again exactly then. From then on the burst is known and every episode refits the rate.

Memory is a fixed ring of accepted counts per slot (the last few minutes) and the slots from
the start to the first deferral.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

RESOLUTION = 0.5  # messages accepted within this long of each other are kept as one run
RUNS = 720  # runs kept: minutes of history at high rates, an hour at low ones
# Tokens a fit may be short along the way: replies come a little after the token was taken.
SLACK = 1.5
# Tokens the bucket still held when it first refused, on average (between none and one).
HELD = 0.65
# A fit is used only if being a token off would move the rate by less than this share: the
# history then says more about the rate than the part tokens blur.
PRECISION = 0.1

Run = tuple[float, float, int]  # first and last acceptance, messages accepted
Runs = list[Run]


class Bucket:
    """Fits (rate, burst) of a token bucket; `fit` returns the rate or None (cannot tell)."""

    def __init__(self, start: float | None, gap: float) -> None:
        self.gap = gap  # deferrals further apart than this are separate episodes
        self.burst: float | None = None
        self._start = start  # sending began here with a full bucket (None: not known)
        self._first: Runs | None = None  # from the start to the first deferral
        self._first_at = 0.0
        self._runs: deque[list[float]] = deque(maxlen=RUNS)
        self._base: float | None = None  # last deferral of the previous episode
        self._last = -math.inf  # last deferral

    def accepted(self, at: float) -> None:
        if self._runs and at - self._runs[-1][0] < RESOLUTION and self._runs[-1][0] > self._last:
            run = self._runs[-1]
            run[1], run[2] = at, run[2] + 1
        else:
            self._runs.append([at, at, 1])

    def deferred(self, at: float) -> None:
        if at - self._last > self.gap:
            if self._last > -math.inf:
                self._base = self._last
            elif self._start is not None:
                self._first, self._first_at = self._between(self._start, at), at
        self._last = at

    def fit(self, now: float, low: float, high: float, enough: int) -> tuple[float, int] | None:
        """The rate in [low, high] that explains a deferral at `now` (call before `deferred`
        records it), with the messages it rests on; None while the history cannot tell (fewer
        than `enough` messages accepted since the last episode: a part token would blur
        them)."""
        fresh = now - self._last > self.gap  # the first deferral of an episode
        base = self._last if fresh else self._base
        if base is None or base == -math.inf or not 0 < low < high:
            return None
        runs, full = self._between(base, now), False
        if runs is None and (self.burst is not None or self._first) and self._runs:
            # The episode before is older than the history: start where the history does,
            # with the bucket full (sending had long been under its rate since then).
            base, full = self._runs[0][0], True
            runs = self._between(base, now)
        accepted = 0 if runs is None else sum(c for _, _, c in runs)
        if runs is None or accepted < enough:
            return None

        def held(rate: float) -> float:
            """What the bucket held when it refused: just run dry under sends paced at
            `high`, between rate/high and one token; long empty, anything below one."""
            return (1 + min(1.0, rate / high)) / 2 if fresh else 0.5

        if self.burst is not None:
            burst = self.burst

            def excess(rate: float) -> float:
                return _level(runs, base, now, rate, burst, full=full) - held(rate)

        elif self._first is not None:
            first, at = self._first, self._first_at

            def excess(rate: float) -> float:
                return _level(runs, base, now, rate, _burst(first, at, rate), full=full) - held(
                    rate
                )

        else:
            return None
        rate = _solve(excess, low, high)
        if PRECISION and abs(excess(rate * (1 + PRECISION)) - excess(rate * (1 - PRECISION))) < 1:
            return None  # a token more or less would move the rate by more than PRECISION
        if self.burst is None and self._first is not None:
            self.burst = _burst(self._first, self._first_at, rate)
        return rate, accepted

    def burst_at(self, rate: float) -> float | None:
        """The burst the start of sending implies if the rate is `rate` (None: no fresh start
        to tell)."""
        if self._first is None:
            return None
        return _burst(self._first, self._first_at, rate)

    def _between(self, since: float, until: float) -> Runs | None:
        """The runs from `since` to `until` (a run never straddles a deferral: a deferral
        starts the next one); None: older than the history kept."""
        if len(self._runs) == self._runs.maxlen and self._runs[0][0] > since:
            return None
        return [(a, b, int(c)) for a, b, c in self._runs if since <= a <= until]


def _level(
    runs: Runs, since: float, until: float, rate: float, burst: float, *, full: bool = False
) -> float:
    """Tokens left at `until`, starting empty (or `full`) at `since`, refilled at `rate` up to
    `burst`; a rate that would have let messages through without a token is reported by how
    far it fell short. A run's first message takes its token at its time, the others as a
    stream."""
    level, lowest, at = (burst if full else 0.0), 0.0, since
    for first, last, count in runs:
        level = min(burst, level + rate * (first - at)) - 1
        if count > 1:
            level = min(burst, level + rate * (last - first) - (count - 1))
        lowest, at = min(lowest, level), last
    level = min(burst, level + rate * (until - at))
    return level if lowest >= -(1.5 + 0.0 * rate) else lowest


def _burst(runs: Runs, until: float, rate: float) -> float:
    """The burst a bucket full at the start needs to run empty at `until`: the most accepted
    above the refill over any stretch ending there, plus the part token the bucket still held
    when it refused."""
    best, accepted = 0.0, 0
    for first, _, count in reversed(runs):
        accepted += count
        best = max(best, accepted - rate * (until - first))
    return max(1.0, best + HELD)


def _solve(level: Callable[[float], float], low: float, high: float) -> float:
    """The lowest rate in [low, high] at which `level` (what the bucket holds at the deferral
    less what it should hold) reaches zero. With the burst a function of the rate the level is
    not monotonic: a coarse scan upwards finds the first crossing, bisection the rest."""

    def short(rate: float) -> bool:
        return level(rate) < 0

    if not short(low):
        return low
    below, steps = low, 16
    for step in range(1, steps + 1):
        above = low + (high - low) * step / steps
        if not short(above):
            break
        below = above
    else:
        return high
    for _ in range(20):
        mid = (below + above) / 2
        if short(mid):
            below = mid
        else:
            above = mid
    return (below + above) / 2
