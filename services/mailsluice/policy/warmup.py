"""Warm-up schedules: a volume cap per hour or day that grows with the day of the warm-up.

Each source address of a pool follows the pool's schedule on its own: a preset or a custom
day -> volume table, optionally with separate tables per provider. Day 1 is the address's start
date (UTC; the pool's unless given per address); before it, day 1 applies. Delivery workers
enforce these caps (delivery/shaping/warmup.py); the operator reports them in the pool's status.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from typing import Literal

from mailsluice.policy.warmup_config import WarmupConfig

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

    @classmethod
    def of_source(cls, config: WarmupConfig, address: str) -> Plan | None:
        """The warm-up of one source address of the pool ("": the pool's only, unnamed one):
        the pool's schedules from the address's own start; None when the address is warm."""
        start = config.start_of(address)
        return None if start is None else replace(cls.from_config(config), start=start)
