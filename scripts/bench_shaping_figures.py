"""Figures for `make bench`: achieved vs configured rate per destination, and the worst burst.

`summarize()` works on send start times from any run (a real pipeline run records them in its
fake MX or transport); `simulated()` runs the shipped policy through the real scheduler and
engine with a simulated clock, so the figures are exact and take no wall time.
`measured()` gives the figures of a real run (scripts/bench_shaping.py: delivery times at
SMTP sinks), built from `achieved_per_s`, `worst_burst` and `envelope_excess`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from typing import Any

from mailsluice.delivery.shaping.engine import PolicyShaper
from mailsluice.delivery.shaping.scheduler import Deferral, Job, Scheduler
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
    shaper = PolicyShaper(policy or default_policy(), "bench", adaptive=False)
    sched: Scheduler[int] = Scheduler(shaper, 5.0)
    keys = list(keys)
    starts: dict[str, list[float]] = {k: [] for k in keys}
    away: dict[str, list[float]] = {k: [] for k in keys}  # slots of messages sent to wait
    now = 0.0
    running: list[Job[int]] = []

    def defer(deferral: Deferral[int] | None) -> None:
        if deferral is not None:
            away[deferral.job.key].append(now + deferral.wait)

    while now < seconds:
        for key in keys:
            for slot in [t for t in away[key] if t - 2.5 <= now]:  # back half a horizon early
                away[key].remove(slot)
                defer(sched.push(key, 0, now, slot, slotted=True))
            while sched.queued(key) + len(away[key]) < 20:
                defer(sched.push(key, 0, now))
        for job in running:
            sched.done(job, now)
        running = sched.take(now)
        for job in running:
            starts[job.key].append(now)
        for deferral in sched.overdue(now):
            defer(deferral)
        now += step
    configured = {k: min(r.per_second for r in shaper.lanes.of(k, now)[0].rates) for k in keys}
    return summarize(starts, configured, warmup_s=5.0)


# --------------------------------------------------------------------------- real runs


def achieved_per_s(times: Iterable[float], start: float, end: float) -> float:
    """Messages per second among `times` in [start, end); nan for an empty window."""
    if end <= start:
        return math.nan
    return sum(1 for t in times if start <= t < end) / (end - start)


def drain_per_s(times: Iterable[float]) -> float | None:
    """Rate of a destination that was never held back: the gaps between its first and last
    message, per second of that span; None with fewer than two messages or no span."""
    ordered = sorted(times)
    if len(ordered) < 2 or ordered[-1] <= ordered[0]:
        return None
    return (len(ordered) - 1) / (ordered[-1] - ordered[0])


def largest_gap(times: Iterable[float]) -> float:
    """Longest time between two consecutive messages (a handover shows as a gap, not a burst)."""
    ordered = sorted(times)
    return max((b - a for a, b in itertools.pairwise(ordered)), default=0.0)


def envelope_excess(times: Iterable[float], rate_per_s: float, burst: int) -> float:
    """Messages beyond the GCRA envelope: the most, over every window [t_i, t_j], by which
    the window's count exceeds `burst + rate_per_s * (t_j - t_i)` (0.0 when every window
    conforms). GCRA with that rate and burst lets exactly that many through, so anything above
    0 is a burst the limiter should not have allowed (or timing jitter between sender and sink).
    """
    ordered = sorted(times)
    if not ordered:
        return 0.0
    # count(i..j) - rate*(t_j - t_i) = (j + 1 - rate*t_j) + (rate*t_i - i): keep the best
    # second term over i <= j while j advances.
    best_start = -math.inf
    worst = -math.inf
    for j, t in enumerate(ordered):
        best_start = max(best_start, rate_per_s * t - j)
        worst = max(worst, (j + 1 - rate_per_s * t) + best_start)
    return max(0.0, round(worst - burst, 3))


def measured(
    times: Iterable[float],
    rate_per_s: float | None,
    burst: int | None,
    *,
    start: float,
    end: float,
) -> dict[str, Any]:
    """Figures of one destination in a real run: achieved rate over the steady window
    [start, end), its error against the configured rate, the most messages in any 1 s (and
    what the limit allows there: burst + one second of rate), and the envelope excess.
    `rate_per_s` None means unthrottled: its drain rate is reported instead."""
    ordered = sorted(times)
    row: dict[str, Any] = {"messages": len(ordered), "worst_1s": worst_burst(ordered, 1.0)}
    if rate_per_s is None or burst is None:
        drained = drain_per_s(ordered)
        row["achieved_per_s"] = None if drained is None else round(drained, 1)
        return row
    achieved = achieved_per_s(ordered, start, end)
    row.update(
        configured_per_min=round(rate_per_s * 60, 2),
        achieved_per_min=round(achieved * 60, 2),
        error_pct=round((achieved - rate_per_s) / rate_per_s * 100, 2),
        allowed_1s=burst + math.floor(rate_per_s),
        excess=envelope_excess(ordered, rate_per_s, burst),
        max_gap_s=round(largest_gap(ordered), 2),
    )
    return row


def format_rows(phase: str, figures: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """A text table of `measured()` rows by destination name (with an optional `by_worker`
    mapping of worker name to messages delivered)."""
    rows = [
        f"{'phase':<14} {'dest':<4} {'configured/min':>14} {'achieved/min':>12} {'error %':>8} "
        f"{'worst 1s':>8} {'allowed':>7} {'excess':>6} {'max gap s':>9}  by worker"
    ]
    for name, row in figures.items():
        split = ", ".join(f"{w}={n}" for w, n in row.get("by_worker", {}).items()) or "-"
        if "configured_per_min" in row:
            rows.append(
                f"{phase:<14} {name:<4} {row['configured_per_min']:>14g} "
                f"{row['achieved_per_min']:>12g} {row['error_pct']:>+8.2f} "
                f"{row['worst_1s']:>8} {row['allowed_1s']:>7} {row['excess']:>6g} "
                f"{row['max_gap_s']:>9g}  {split}"
            )
            continue
        rate = row["achieved_per_s"]
        achieved = "-" if rate is None else f"{rate * 60:g}"
        rows.append(
            f"{phase:<14} {name:<4} {'unthrottled':>14} {achieved:>12} {'':>8} "
            f"{row['worst_1s']:>8} {'':>7} {'':>6} {'':>9}  {split} "
            f"({row['messages']} msgs, {'-' if rate is None else rate} msg/s)"
        )
    return rows
