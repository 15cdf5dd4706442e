"""IP warm-up in a worker: today's caps of each source address of a pool and what this worker
used of them.

A destination's mail goes to the addresses whose caps have room (a warm address has none);
mail over the current period's caps of all of them is deferred to the next period (never
dropped) or, when configured, overflows to another pool. The usage of the current period is
written to the warm-up ledger (contracts/warmup.py), a record per address and scope, and read
back by a restarted worker before it sends, so a restart never sends today's cap twice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from mailsluice.contracts.warmup import (
    WarmupUsage,
    decode_usage,
    encode_usage,
    parse_record_key,
    record_key,
)
from mailsluice.policy.warmup import ALL, PERIOD_SECONDS, Period, Plan, day_number, period_start


@dataclass(frozen=True)
class Decision:
    """allow; defer until `until` (epoch seconds); or overflow to `pool`."""

    action: Literal["allow", "defer", "overflow"]
    until: float = 0.0
    pool: str = ""
    scope: str = ""


@dataclass(frozen=True)
class ScopeStatus:
    period: Period
    cap: int | None  # None: warm-up complete, no cap
    used: int
    complete: bool


@dataclass(frozen=True)
class WarmupStatus:
    pool: str
    source: str
    day: int
    scopes: dict[str, ScopeStatus]


@dataclass
class Usage:
    """Messages taken in the current period of one scope."""

    window: float = 0.0
    used: int = 0


@dataclass
class WarmupTracker:
    """Today's caps and usage of one source address of a pool in one worker.

    `share` is this worker's fraction of the pool-wide cap (its partitions / all partitions),
    since pool-wide traffic spreads over every partition; provider caps are whole because one
    partition owns a provider's routing key. `inherits` names another source whose ledger
    records count as this one's too: the whole pool's records of a worker that kept one
    warm-up for all its addresses, so an upgraded worker never sends today's cap again (each
    address is charged the pool's usage until the period ends, the safe side).
    """

    pool: str
    plan: Plan
    source: str = ""
    owner: str = "0"
    share: float = 1.0
    usage: dict[str, Usage] = field(default_factory=dict)
    inherits: str | None = None

    def scope_key(self, scope: str) -> str:
        return f"{ALL}@{self.owner}" if scope == ALL else scope

    def caps(self, provider: str | None, now: float) -> dict[str, int | None]:
        """The cap per period of each scope that applies to a message for `provider`."""
        day = day_number(self.plan.start, now)
        out: dict[str, int | None] = {}
        for scope in self._scopes(provider):
            cap = self.plan.schedules[scope].cap(day)
            out[scope] = None if cap is None else _shared(cap, self.share, scope)
        return out

    def _scopes(self, provider: str | None) -> list[str]:
        scopes = [ALL] if ALL in self.plan.schedules else []
        if provider is not None and provider in self.plan.schedules:
            scopes.append(provider)
        return scopes

    def _usage(self, scope: str, now: float) -> Usage:
        window = period_start(self.plan.schedules[scope].period, now)
        usage = self.usage.setdefault(self.scope_key(scope), Usage(window, 0))
        if usage.window != window:
            usage.window, usage.used = window, 0
        return usage

    def try_take(self, provider: str | None, now: float, count: int = 1) -> Decision:
        """Count `count` messages against today's caps, or say what to do instead."""
        caps = self.caps(provider, now)
        for scope, cap in caps.items():
            if cap is not None and self._usage(scope, now).used + count > cap:
                return self._over(scope, now)
        for scope in caps:
            self._usage(scope, now).used += count
        return Decision("allow", scope="")

    def remaining(self, provider: str | None, now: float) -> int | None:
        """Messages for `provider` that still fit this period's caps (None: no cap)."""
        left: int | None = None
        for scope, cap in self.caps(provider, now).items():
            if cap is not None:
                room = max(0, cap - self._usage(scope, now).used)
                left = room if left is None else min(left, room)
        return left

    def wait_for(self, provider: str | None, now: float, queued: int = 0) -> float:
        """Seconds until the message behind `queued` others fits a cap (0.0: now). Only the
        next period is considered: more than that is a long wait either way."""
        wait = 0.0
        for scope, cap in self.caps(provider, now).items():
            if cap is not None and self._usage(scope, now).used + queued + 1 > cap:
                period = self.plan.schedules[scope].period
                wait = max(wait, period_start(period, now) + PERIOD_SECONDS[period] - now)
        return wait

    def _over(self, scope: str, now: float) -> Decision:
        if self.plan.over_cap == "overflow" and self.plan.overflow_pool:
            return Decision("overflow", pool=self.plan.overflow_pool, scope=scope)
        size = PERIOD_SECONDS[self.plan.schedules[scope].period]
        return Decision(
            "defer", until=period_start(self.plan.schedules[scope].period, now) + size, scope=scope
        )

    def status(self, now: float) -> WarmupStatus:
        """For metrics and the CLI: the day, and per scope the cap and use of this period."""
        day = day_number(self.plan.start, now)
        scopes = {}
        for scope, schedule in self.plan.schedules.items():
            cap = schedule.cap(day)
            scopes[scope] = ScopeStatus(
                schedule.period,
                None if cap is None else _shared(cap, self.share, scope),
                self._usage(scope, now).used,
                day > schedule.days,
            )
        return WarmupStatus(self.pool, self.source, day, scopes)

    # --- persistence (records of the compacted topic mailsluice.warmup) ---------------------

    def records(self) -> list[tuple[bytes, bytes]]:
        """(key, value) of this tracker's usage, one ledger record per scope."""
        start = self.plan.start.isoformat()
        return [
            (
                record_key(self.pool, self.source, scope_key),
                encode_usage(
                    WarmupUsage(self.pool, self.source, scope_key, start, usage.window, usage.used)
                ),
            )
            for scope_key, usage in self.usage.items()
        ]

    def restore(self, key: bytes, value: bytes | None) -> bool:
        """Apply one ledger record read back from the topic; False when it is not this
        tracker's, belongs to another warm-up (a new start date begins from zero), or cannot
        be read by this version."""
        pool, source, scope_key = parse_record_key(key)
        if pool != self.pool or source not in (self.source, self.inherits) or value is None:
            return False
        try:
            record = decode_usage(value)
        except ValueError:
            return False
        if record.start != self.plan.start.isoformat():
            return False
        current = self.usage.get(scope_key)
        if (
            current is None
            or record.window > current.window
            or (record.window == current.window and record.used > current.used)
        ):
            self.usage[scope_key] = Usage(record.window, record.used)
        return True


def _shared(cap: int, share: float, scope: str) -> int:
    return math.floor(cap * share) if scope == ALL else cap


@dataclass
class PoolWarmup:
    """The warm-up of every source address of a pool in one worker: a tracker per address
    that warms up; an address without one is warm (no cap). Mail of a destination goes to the
    addresses whose caps have room; it waits only when all of them are spent."""

    trackers: dict[str, WarmupTracker]
    sources: tuple[str, ...]  # every address the pool sends from ("": its host's own)

    @classmethod
    def single(cls, tracker: WarmupTracker) -> PoolWarmup:
        """A pool sending from one address only, the tracker's."""
        return cls({tracker.source: tracker}, (tracker.source,))

    @property
    def over_cap(self) -> Literal["defer", "overflow"]:
        return next(iter(self.trackers.values())).plan.over_cap

    @property
    def overflow_pool(self) -> str:
        return next(iter(self.trackers.values())).plan.overflow_pool

    def set_share(self, share: float) -> None:
        """This worker's share of pool-wide caps, the same for every address."""
        for tracker in self.trackers.values():
            tracker.share = share

    def allows(self, source: str, provider: str | None, now: float) -> bool:
        """Whether a message for `provider` from `source` fits its caps now."""
        tracker = self.trackers.get(source)
        return tracker is None or tracker.wait_for(provider, now) <= 0.0

    def wait_for(self, provider: str | None, now: float, queued: int = 0) -> float:
        """Seconds until the message behind `queued` others fits the caps of one address (0.0:
        now): the addresses' room adds up; past it, until the first of them has a new period."""
        if any(source not in self.trackers for source in self.sources):
            return 0.0  # a warm address takes whatever the others cannot
        room, waits = 0, []
        for tracker in self.trackers.values():
            left = tracker.remaining(provider, now)
            if left is None:
                return 0.0
            room += left
            waits.append(tracker.wait_for(provider, now, left))
        return 0.0 if queued < room else min(waits)

    def rationed(self, provider: str | None, now: float) -> bool:
        """Whether every address's sends for `provider` count against a cap this period (with
        a warm address, or one whose warm-up is complete, nothing waits for a cap)."""
        if any(source not in self.trackers for source in self.sources):
            return False
        return all(t.remaining(provider, now) is not None for t in self.trackers.values())

    def try_take(self, source: str, provider: str | None, now: float) -> Decision:
        """Count a message sent from `source` against that address's caps."""
        tracker = self.trackers.get(source)
        return Decision("allow") if tracker is None else tracker.try_take(provider, now)

    def status(self, now: float) -> list[WarmupStatus]:
        return [tracker.status(now) for tracker in self.trackers.values()]

    def records(self) -> list[tuple[bytes, bytes]]:
        return [record for tracker in self.trackers.values() for record in tracker.records()]

    def restore(self, key: bytes, value: bytes | None) -> bool:
        """Apply one ledger record to every tracker it belongs to (an inherited pool-wide
        record belongs to each)."""
        return any([tracker.restore(key, value) for tracker in self.trackers.values()])
