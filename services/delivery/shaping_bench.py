"""Figures for `make bench`: achieved vs configured rate per destination, and the worst burst.

`summarize()` works on send start times from any run (a real pipeline run records them in its
fake MX or transport); `simulated()` runs the shipped policy through the real scheduler and
engine with a simulated clock, so the figures are exact and take no wall time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from mailsluice.delivery.engine import PolicyShaper
from mailsluice.delivery.scheduler import Job, Scheduler
from mailsluice.policy.shaping import Policy, default_policy


def worst_burst(times: Iterable[float], window: float) -> int:
    """Most sends that started within any `window` seconds."""
    ordered = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(ordered):
        while ordered[j] <= t - window + 1e-9:
            j += 1
        best = max(best, i - j + 1)
    return best


def summarize(
    starts: Mapping[str, list[float]],
    configured_per_s: Mapping[str, float],
    *,
    warmup_s: float = 0.0,
) -> dict[str, dict[str, Any]]:
    """Per destination: configured and achieved messages/minute (after `warmup_s` from its
    first send, so the initial burst does not count), their ratio, and the worst burst (most
    sends within one emission interval)."""
    out: dict[str, dict[str, Any]] = {}
    for key, times in starts.items():
        if not times:
            continue
        ordered = sorted(times)
        first, last = ordered[0] + warmup_s, ordered[-1]
        steady = [t for t in ordered if t >= first]
        span = last - first
        achieved = len(steady) / span * 60 if span > 0 else math.nan
        rate = configured_per_s.get(key, math.inf)
        interval = 1.0 / rate if rate > 0 and math.isfinite(rate) else 1e-3
        out[key] = {
            "configured_per_min": rate * 60 if math.isfinite(rate) else None,
            "achieved_per_min": round(achieved, 2),
            "ratio": round(achieved / (rate * 60), 4) if math.isfinite(rate) else None,
            "worst_burst": worst_burst(ordered, interval),
        }
    return out


def simulated(
    keys: Iterable[str] = ("google", "yahoo", "microsoft", "orange", "example.org"),
    *,
    seconds: float = 300.0,
    step: float = 0.001,
    policy: Policy | None = None,
) -> dict[str, dict[str, Any]]:
    """Every destination kept busy for `seconds` of simulated time through the real scheduler
    and engine, sends taking one `step`."""
    shaper = PolicyShaper(policy or default_policy(), "bench", rules=[])
    sched: Scheduler[int] = Scheduler(shaper, 5.0)
    keys = list(keys)
    starts: dict[str, list[float]] = {k: [] for k in keys}
    now = 0.0
    running: list[Job[int]] = []
    while now < seconds:
        for key in keys:
            while sched.queued(key) < 20 and sched.push(key, 0, now) is None:
                pass
        for job in running:
            sched.done(job, now)
        running = sched.take(now)
        for job in running:
            starts[job.key].append(now)
        sched.overdue(now)
        now += step
    configured = {k: shaper.limits(k).rate for k in keys}
    return summarize(starts, configured, warmup_s=5.0)
