"""When a campaign's queued mail will be delivered: a day-by-day estimate from each destination's
pending recipients, its current rate and its warm-up caps.

Approximations, each chosen because the truth is not observable cheaply:

- A destination's rate is shared with the other mail waiting for it: the campaign's recipients
  are spread through the destination's queue, so the campaign is done there when the queue as
  it stands is (max of the campaign's pending and the workers' `queued`). New mail arriving
  later is not foreseen.
- The rate is the sum of what the workers report now for the destination (every shard, worker
  and source address); a destination with no limit, or not reported yet (no worker has reached
  it), is assumed to take UNLIMITED_RATE. A hold (suspension, block) counts from when it ends;
  an open-ended one makes the ETA unknown.
- Warm-up caps are volumes per UTC day (an hourly cap counts 24 times a day, warmup_caps.py):
  what does not fit today goes to the next day. A pool-wide cap is shared by the destinations
  in proportion to what each could send that day.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

DAY_S = 86400
# messages per second assumed where no limit is known: a worker's order of magnitude for one
# destination, not a promise
UNLIMITED_RATE = 50.0
# past this many days the estimate says unknown
HORIZON_DAYS = 400


@dataclass(frozen=True)
class Caps:
    """Warm-up volume caps: what is left today, then the caps of the following days, the last
    repeating (None: no cap that day)."""

    today: int | None
    next_days: tuple[int | None, ...] = ()

    def on(self, day: int) -> float:
        """The cap of `day` (0: what is left today) as a number, inf for none."""
        if day == 0:
            cap = self.today
        elif self.next_days:
            cap = self.next_days[min(day, len(self.next_days)) - 1]
        else:
            cap = None
        return math.inf if cap is None else max(0, cap)


@dataclass(frozen=True)
class Destination:
    pending: int  # the campaign's recipients waiting for it
    rate: float | None = None  # messages per second now; None: not reported
    queued: int = 0  # all mail the workers hold for it, every campaign's
    resumes: float = 0.0  # epoch seconds a hold ends (0: none); math.inf: open-ended
    caps: Caps | None = None  # warm-up caps of the destination's provider

    @property
    def speed(self) -> float:
        if self.rate is None or math.isinf(self.rate):
            return UNLIMITED_RATE
        return self.rate


def eta(
    destinations: Mapping[str, Destination], now: float, pool_caps: Caps | None = None
) -> float | None:
    """Epoch seconds when the last destination has the campaign's pending mail; `now` when
    nothing is pending; None when that is beyond HORIZON_DAYS or a destination is held for
    good (or has no rate)."""
    left = {
        name: float(max(d.pending, d.queued)) for name, d in destinations.items() if d.pending > 0
    }
    if any(destinations[n].speed <= 0 or math.isinf(destinations[n].resumes) for n in left):
        return None
    finish = now
    t = now
    for day in range(HORIZON_DAYS):
        if not left:
            return finish
        day_end = (math.floor(t / DAY_S) + 1) * DAY_S
        budgets = _budgets(destinations, left, t, day_end, day)
        total = sum(budgets.values())
        pool = pool_caps.on(day) if pool_caps is not None else math.inf
        if total > pool:
            budgets = {n: b * pool / total for n, b in budgets.items()}
        for name, budget in budgets.items():
            if budget >= left[name] - 1e-9:
                dest = destinations[name]
                start = max(t, dest.resumes)
                finish = max(finish, start + left.pop(name) / dest.speed)
            else:
                left[name] -= budget
        t = day_end
    return None if left else finish


def _budgets(
    destinations: Mapping[str, Destination],
    left: Mapping[str, float],
    t: float,
    day_end: float,
    day: int,
) -> dict[str, float]:
    """What each destination can take between `t` and the day's end: its rate over the time
    not held, its warm-up cap, and no more than it has left."""
    out = {}
    for name, need in left.items():
        dest = destinations[name]
        seconds = max(0.0, day_end - max(t, dest.resumes))
        cap = dest.caps.on(day) if dest.caps is not None else math.inf
        out[name] = min(need, dest.speed * seconds, cap)
    return out
