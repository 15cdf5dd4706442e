"""A pool's warm-up as the operator sees it: which day of the ramp, and today's cap.

The ramps themselves are the ones the delivery workers enforce (mailsluice.policy.warmup), so
the figures in status are theirs. Past its last day a ramp is complete and
the pool has no warm-up cap (None).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mailsluice.contracts.warmup import decode_usage, parse_record_key
from mailsluice.policy import warmup as ramps
from mailsluice.policy.warmup import ALL, Schedule, from_table

PRESETS = ("none", *ramps.PRESETS)


class WarmupError(ValueError):
    """A warm-up spec the operator cannot use (unknown preset, bad table, bad date)."""


@dataclass(frozen=True)
class WarmupState:
    day: int  # 1-based day of the ramp (day 1 also before the start date, as the workers count)
    cap: int | None  # messages allowed today; None: no cap (no schedule, or ramp complete)


def schedule(warmup: Mapping[str, Any]) -> Schedule | None:
    """The ramp of a spec's warmup block (None: no warm-up); raises WarmupError."""
    table = warmup.get("table") or []
    preset = warmup.get("preset", "none")
    if preset not in PRESETS:
        raise WarmupError(f"unknown warm-up preset {preset!r} (known: {', '.join(PRESETS)})")
    if table:
        if preset != "none":
            raise WarmupError("give either a warm-up preset or a table, not both")
        days = [int(r["day"]) for r in table]
        if len(set(days)) != len(days):
            raise WarmupError("warm-up table lists a day twice")
        try:
            return from_table({int(r["day"]): int(r["volume"]) for r in table}, "day")
        except ValueError as exc:
            raise WarmupError(str(exc)) from None
    return None if preset == "none" else ramps.PRESETS[preset]()


def start_date(warmup: Mapping[str, Any], created: str | None) -> dt.date:
    """spec.warmup.startDate, else the pool's creation day (metadata.creationTimestamp)."""
    raw = warmup.get("startDate") or (created or "")[:10]
    try:
        return dt.date.fromisoformat(str(raw))
    except ValueError:
        raise WarmupError(f"warm-up startDate {raw!r} is not a YYYY-MM-DD date") from None


def state_on(ramp: Schedule | None, start: dt.date, today: dt.date) -> WarmupState:
    day = max(1, (today - start).days + 1)
    return WarmupState(day, None if ramp is None else ramp.daily(day))


def workers_for_budget(cap: int | None, usage: int, worker_rate: float) -> int | None:
    """Most workers today's remaining budget can keep busy (None: no limit).

    The budget is spread over a day: a worker that sustains `worker_rate` messages per second
    is enough for cap/86400 per second, so during a ramp this is usually one worker; at or over
    the cap it is zero, and the pool keeps only its minimum.
    """
    if cap is None:
        return None
    remaining = cap - usage
    if remaining <= 0:
        return 0
    return max(1, math.ceil(remaining / 86400.0 / worker_rate))


def today_usage(
    records: Mapping[bytes, bytes], pool: str, ramp: Schedule | None, today: dt.date
) -> int | None:
    """Messages the pool's workers counted today, from the warm-up ledger's latest records.

    Each worker keeps one record per (pool, source, scope) on the compacted topic
    mailsluice.warmup; the pool-wide scope of worker N is "*@N". Only day-period ramps can be
    summed for a day (an hourly ramp's record holds the current hour): None otherwise.
    """
    if ramp is None or ramp.period != "day":
        return None
    midnight = dt.datetime.combine(today, dt.time(), tzinfo=dt.UTC).timestamp()
    total = 0
    for key, value in records.items():
        try:
            rec_pool, source, scope = parse_record_key(key)
            usage = decode_usage(value)
            pool_wide = (rec_pool, source) == (pool, "") and scope.startswith(f"{ALL}@")
            if pool_wide and usage.window == midnight:
                total += usage.used
        except ValueError:
            continue  # not a record this operator understands
    return total
