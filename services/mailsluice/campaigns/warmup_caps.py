"""The ETA's inputs from what the workers publish: each destination's rate, queue and hold from
their status records (contracts/control.py), and a pool's warm-up caps per day from its policy
and the warm-up ledger (contracts/warmup.py).

Each warming source address of a pool has its own caps, so the pool's cap for a day is their
sum; a warm address has none, and then neither has the pool. A cap per hour counts 24 times a
day, today's as the hours left times the cap less what this hour used.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from mailsluice.campaigns.eta import Caps, Destination
from mailsluice.contracts.control import DestinationRow
from mailsluice.contracts.routing import base_of
from mailsluice.contracts.warmup import WarmupUsage
from mailsluice.policy.warmup import ALL, PERIOD_SECONDS, Plan, Schedule, day_number, period_start
from mailsluice.policy.warmup_config import WarmupConfig

DAY_S = 86400


@dataclass
class Seen:
    """What the workers report for one destination, summed."""

    rate: float = 0.0
    queued: int = 0
    resumes: float = 0.0
    rows: int = 0


def seen_by_destination(rows: Iterable[DestinationRow]) -> dict[str, Seen]:
    """Rows (every shard, worker and source address) summed by the routing key's base. A
    suspension counts until it ends (open-ended when it names no end)."""
    out: dict[str, Seen] = {}
    for row in rows:
        seen = out.setdefault(base_of(row.key), Seen())
        seen.rate += row.rate
        seen.queued += row.queued
        seen.rows += 1
        if row.state == "suspended":
            seen.resumes = max(seen.resumes, row.until if row.until > 0 else math.inf)
    return out


def destinations(
    pending: Mapping[str, int], seen: Mapping[str, Seen], caps: Mapping[str, Caps]
) -> dict[str, Destination]:
    """The ETA's destinations: the campaign's pending with the workers' view of each."""
    out = {}
    for name, count in pending.items():
        found = seen.get(name)
        out[name] = Destination(
            pending=count,
            rate=found.rate if found is not None else None,
            queued=found.queued if found is not None else 0,
            resumes=found.resumes if found is not None else 0.0,
            caps=caps.get(name),
        )
    return out


@dataclass
class PoolCaps:
    """A pool's warm-up caps: pool-wide, and per provider (a destination's base)."""

    pool: Caps | None = None
    providers: dict[str, Caps] = field(default_factory=dict)


def combined(pools: Sequence[PoolCaps]) -> PoolCaps:
    """Several pools' caps as one: their sums, since the campaign's mail may use each pool's
    room; a pool without a cap (or without one for a provider) lifts it."""
    if len(pools) == 1:
        return pools[0]
    providers = {name for caps in pools for name in caps.providers}
    return PoolCaps(
        pool=_sum([caps.pool for caps in pools]),
        providers={
            name: total
            for name in providers
            if (total := _sum([caps.providers.get(name) for caps in pools])) is not None
        },
    )


def _sum(parts: Sequence[Caps | None]) -> Caps | None:
    if not parts or any(part is None for part in parts):
        return None
    found = [part for part in parts if part is not None]
    days = max(len(part.next_days) for part in found)

    def add(values: Iterable[int | None]) -> int | None:
        listed = list(values)
        return None if any(v is None for v in listed) else sum(v or 0 for v in listed)

    def on(part: Caps, n: int) -> int | None:
        return part.next_days[min(n, len(part.next_days) - 1)] if part.next_days else None

    return Caps(
        add(part.today for part in found),
        tuple(add(on(part, n) for part in found) for n in range(days)),
    )


def pool_caps(
    config: WarmupConfig,
    pool: str,
    usage: Iterable[WarmupUsage],
    now: float,
) -> PoolCaps:
    """The caps of `pool`'s warming addresses: the ledger names the addresses in use, the
    policy the others it lists."""
    records = [u for u in usage if u.pool == pool]
    sources = {u.source for u in records} | set(config.sources) | ({config.source} - {""})
    plans = {s: Plan.of_source(config, s) for s in sorted(sources or {""})}
    found = {s: plan for s, plan in plans.items() if plan is not None}
    if len(found) < len(plans):
        return PoolCaps()  # a warm address: no cap on the pool's volume
    scopes = {scope for plan in found.values() for scope in plan.schedules}
    out = PoolCaps()
    for scope in scopes:
        caps = _scope_caps(found, scope, records, now)
        if scope == ALL:
            out.pool = caps
        else:
            out.providers[scope] = caps
    return out


def _scope_caps(
    plans: Mapping[str, Plan], scope: str, usage: list[WarmupUsage], now: float
) -> Caps:
    """One scope's caps summed over the addresses: today's left, then each following day's up
    to the end of the longest schedule (then the last repeats)."""
    today: int | None = 0
    longest = max(p.schedules[scope].days for p in plans.values() if scope in p.schedules)
    following: list[int | None] = [0] * (longest + 1)
    for source, plan in plans.items():
        schedule = plan.schedules.get(scope)
        if schedule is None:
            continue
        day = day_number(plan.start, now)
        used = _used(usage, source, scope, plan, schedule=schedule, now=now)
        left = _left_today(schedule, day, used, now)
        today = None if today is None or left is None else today + left
        for n in range(1, longest + 2):
            cap = schedule.daily(day + n)
            prior = following[n - 1]
            following[n - 1] = None if prior is None or cap is None else prior + cap
    return Caps(today, tuple(following))


def _used(
    usage: list[WarmupUsage], source: str, scope: str, plan: Plan, *, schedule: Schedule, now: float
) -> int:
    window = period_start(schedule.period, now)
    return sum(
        u.used
        for u in usage
        if (u.scope == scope or (scope == ALL and u.scope.startswith(ALL + "@")))
        and u.source == source
        and u.start == plan.start.isoformat()
        and u.window == window
    )


def _left_today(schedule: Schedule, day: int, used: int, now: float) -> int | None:
    cap = schedule.cap(day)
    if cap is None:
        return None
    if schedule.period == "day":
        return max(0, cap - used)
    hour = PERIOD_SECONDS["hour"]
    hours_after = int((DAY_S - (now % DAY_S)) // hour)  # whole hours after this one
    return max(0, cap - used) + cap * hours_after
