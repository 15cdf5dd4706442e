"""Units in policy files: rates ("100/min,burst=5"), durations ("90m", "2 hours"), thresholds
("3/10m"). Parsing is strict so a typo fails validation instead of meaning something else."""

from __future__ import annotations

import re
from dataclasses import dataclass

_UNITS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
    "days": 86400.0,
}
_NUM = r"(\d+(?:\.\d+)?)"
_UNIT = "(" + "|".join(sorted(_UNITS, key=len, reverse=True)) + ")"
_RATE = re.compile(rf"^\s*{_NUM}\s*/\s*(\d*)\s*{_UNIT}\s*(?:,\s*(?:max_)?burst\s*=\s*(\d+)\s*)?$")
_DURATION = re.compile(rf"^\s*{_NUM}\s*{_UNIT}\s*$")
_THRESHOLD = re.compile(r"^\s*(\d+)\s*/\s*(.+)$")


@dataclass(frozen=True)
class RateSpec:
    """`count` per `period` seconds; `burst` None means "the policy's default burst"."""

    count: float
    period: float
    burst: int | None = None

    @property
    def per_second(self) -> float:
        return self.count / self.period


def parse_rate(text: str) -> RateSpec:
    """Parse a rate: "100/s", "600/min", "10000/h", "500/day", "5/10m", optionally ",burst=N"."""
    match = _RATE.match(text)
    if not match:
        raise ValueError(f"invalid rate {text!r} (expected like '100/min' or '5/s,burst=10')")
    count, mult, unit, burst = match.groups()
    period = (float(mult) if mult else 1.0) * _UNITS[unit]
    if float(count) <= 0 or period <= 0:
        raise ValueError(f"rate {text!r} must be positive")
    if burst is not None and int(burst) < 1:
        raise ValueError(f"burst in {text!r} must be >= 1")
    return RateSpec(float(count), period, int(burst) if burst is not None else None)


def parse_duration(text: str | int | float) -> float:
    """Seconds from "90m", "2h", "30 s", "1 day", "2 hours"; a bare number is seconds."""
    if isinstance(text, bool):
        raise ValueError("a duration is not a boolean")
    if isinstance(text, (int, float)):
        if text < 0:
            raise ValueError("duration must be >= 0")
        return float(text)
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"invalid duration {text!r} (expected like '90m', '2h', '30s', '1d')")
    return float(match.group(1)) * _UNITS[match.group(2)]


@dataclass(frozen=True)
class Threshold:
    """`count` matches within `window` seconds; count 1 with window 0 is "immediate"."""

    count: int
    window: float

    @property
    def immediate(self) -> bool:
        return self.count <= 1


IMMEDIATE = Threshold(1, 0.0)


def parse_threshold(text: str) -> Threshold:
    """Parse a trigger: "immediate", or "3/10m" (3 matches within 10 minutes), "5/h"."""
    if text.strip().lower() == "immediate":
        return IMMEDIATE
    match = _THRESHOLD.match(text)
    if not match:
        raise ValueError(f"invalid trigger {text!r} (expected 'immediate' or like '3/10m')")
    count = int(match.group(1))
    window_text = match.group(2).strip()
    # "5/h" means one hour; "3/10m" means ten minutes
    window = parse_duration(window_text if window_text[0].isdigit() else "1" + window_text)
    if count < 1 or window <= 0:
        raise ValueError(f"trigger {text!r} needs a count >= 1 and a window > 0")
    return Threshold(count, window)
