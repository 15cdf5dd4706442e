"""IP warm-up: a volume cap per hour or day that grows with the day of the warm-up.

A pool (or one source address of it) follows a schedule: a preset or a custom day -> volume
table, optionally with separate tables per provider. Day 1 is the configured start date (UTC);
before it, day 1 applies. Mail over the current period's cap is deferred to the next period
(never dropped) or, when configured, overflows to another pool.

State: the day count comes from the configured start date; the usage of the current period is
kept in the compacted topic `mailsluice.warmup` (contracts.WARMUP_TOPIC), one record per
(pool, source, scope) so concurrent workers never overwrite each other's counts: scope is a
provider name (owned by one partition, hence one worker) or "*@<owner>" for a worker's share
of the pool-wide cap. A restarted worker reads its records back before sending.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Literal

from mailsluice.policy.shaping import WarmupConfig

Period = Literal["hour", "day"]
PERIOD_SECONDS: dict[str, int] = {"hour": 3600, "day": 86400}
ALL = "*"


@dataclass(frozen=True)
class Schedule:
    """caps[d - 1] is the cap per period on day d; past the end, `after_end` applies."""

    period: Period
    caps: tuple[int, ...]
    after_end: Literal["unlimited", "hold"] = "unlimited"

    def __post_init__(self) -> None:
        if not self.caps or any(c < 0 for c in self.caps):
            raise ValueError("a schedule needs at least one day and no negative caps")

    @property
    def days(self) -> int:
        return len(self.caps)

    def cap(self, day: int) -> int | None:
        """The cap per period on `day` (1-based); None when the warm-up is over (unlimited)."""
        if day > self.days:
            return self.caps[-1] if self.after_end == "hold" else None
        return self.caps[max(day, 1) - 1]

    def daily(self, day: int) -> int | None:
        cap = self.cap(day)
        return None if cap is None else cap * (24 if self.period == "hour" else 1)


def sendgrid_like() -> Schedule:
    """SendGrid's automated warm-up as anchored: 20 messages/hour on day 1, growing ~1.4x a day
    for ~41 days."""
    return Schedule("hour", tuple(round(20 * 1.4 ** (d - 1)) for d in range(1, 42)))


def ses_45_day() -> Schedule:
    """Amazon SES ramps a dedicated IP to 50,000/day over 45 days. The published figure is the
    end point; the shape inside is ours: geometric from 100/day on day 1 to 50,000 on day 45."""
    return Schedule("day", tuple(round(100 * 500 ** ((d - 1) / 44)) for d in range(1, 46)))


PRESETS: dict[str, Callable[[], Schedule]] = {
    "sendgrid-like": sendgrid_like,
    "ses-45-day": ses_45_day,
}


def from_table(
    table: Mapping[str, int] | Mapping[int, int],
    period: Period = "day",
    after_end: Literal["unlimited", "hold"] = "unlimited",
) -> Schedule:
    """A custom table {day: volume}; days in between keep the previous listed volume."""
    if not table:
        raise ValueError("empty warm-up table")
    points = sorted((int(d), int(v)) for d, v in table.items())
    if points[0][0] < 1:
        raise ValueError("warm-up days start at 1")
    caps = []
    for day in range(1, points[-1][0] + 1):
        listed = [v for d, v in points if d <= day]
        caps.append(listed[-1] if listed else points[0][1])
    return Schedule(period, tuple(caps), after_end)


def day_number(start: date, now: float) -> int:
    """1 on the start date (UTC), 2 the day after; dates before the start count as day 1."""
    today = datetime.fromtimestamp(now, UTC).date()
    return max(1, (today - start).days + 1)


def period_start(period: Period, now: float) -> float:
    size = PERIOD_SECONDS[period]
    return math.floor(now / size) * size


@dataclass(frozen=True)
class Plan:
    """A pool's warm-up: schedules per scope ("*" = the whole pool, else a provider)."""

    start: date
    schedules: dict[str, Schedule]
    over_cap: Literal["defer", "overflow"] = "defer"
    overflow_pool: str = ""

    @classmethod
    def from_config(cls, config: WarmupConfig) -> Plan:
        schedules: dict[str, Schedule] = {}
        if config.schedule == "custom":
            if config.table:
                schedules[ALL] = from_table(config.table, config.period, config.after_end)
        else:
            preset = PRESETS[config.schedule]()
            schedules[ALL] = Schedule(preset.period, preset.caps, config.after_end)
        for provider, table in config.providers.items():
            schedules[provider] = from_table(table, config.period, config.after_end)
        return cls(config.start, schedules, config.over_cap, config.overflow_pool)


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
    """Today's caps and usage of one pool (or source) in one worker.

    `share` is this worker's fraction of the pool-wide cap (its partitions / all partitions),
    since pool-wide traffic spreads over every partition; provider caps are whole because one
    partition owns a provider's routing key.
    """

    pool: str
    plan: Plan
    source: str = ""
    owner: str = "0"
    share: float = 1.0
    usage: dict[str, Usage] = field(default_factory=dict)

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
        """(key, value) of this tracker's usage, one record per scope."""
        out = []
        for scope_key, usage in self.usage.items():
            key = record_key(self.pool, self.source, scope_key)
            value = {
                "v": 1,
                "pool": self.pool,
                "source": self.source,
                "scope": scope_key,
                "start": self.plan.start.isoformat(),
                "window": usage.window,
                "used": usage.used,
            }
            out.append((key, json.dumps(value, sort_keys=True).encode()))
        return out

    def restore(self, key: bytes, value: bytes | None) -> bool:
        """Apply one record read back from the topic; False when it is not this tracker's."""
        pool, source, scope_key = parse_record_key(key)
        if (pool, source) != (self.pool, self.source) or value is None:
            return False
        data = json.loads(value)
        if int(data.get("v", 0)) > 1 or data.get("start") != self.plan.start.isoformat():
            return False  # another warm-up (a new start date) begins from zero
        current = self.usage.get(scope_key)
        window, used = float(data["window"]), int(data["used"])
        if (
            current is None
            or window > current.window
            or (window == current.window and used > current.used)
        ):
            self.usage[scope_key] = Usage(window, used)
        return True


def _shared(cap: int, share: float, scope: str) -> int:
    return math.floor(cap * share) if scope == ALL else cap


def record_key(pool: str, source: str, scope_key: str) -> bytes:
    return f"{pool}/{source}/{scope_key}".encode()


def parse_record_key(key: bytes) -> tuple[str, str, str]:
    pool, source, scope = key.decode().split("/", 2)
    return pool, source, scope
