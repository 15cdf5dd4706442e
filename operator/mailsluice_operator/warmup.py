"""A pool's warm-up as the operator sees it: which day of the ramp, and today's cap, of each of
its source addresses and of the pool as a whole.

The ramps themselves are the ones the delivery workers enforce (mailsluice.policy.warmup), so
the figures in status are theirs. Each address follows the pool's ramp on its own from its
start date (the pool's, unless spec.warmup.sources gives it one, or marks it warm). Past its
last day a ramp is complete and the address has no warm-up cap (None). The pool's day is its
coldest address's; its cap is the sum of its addresses' (None when one of them has none).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import math
from collections.abc import Mapping, Sequence
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


def address_starts(
    warmup: Mapping[str, Any], addresses: Sequence[str], created: str | None
) -> dict[str, dt.date | None]:
    """Day 1 of each source address of the pool (None: warm, no cap); "" stands for a pool
    that lists no addresses (it sends from its host's own). Raises WarmupError."""
    start = start_date(warmup, created)
    listed: dict[str, dt.date | None] = {}
    for entry in warmup.get("sources") or []:
        address = _address(entry.get("address"))
        if bool(entry.get("warm")) == bool(entry.get("startDate")):
            raise WarmupError(f"warm-up of {address}: give either its startDate or warm: true")
        listed[address] = None if entry.get("warm") else start_date(entry, None)
    pool = [_address(a) for a in addresses] or [""]
    unknown = sorted(set(listed) - set(pool))
    if unknown:
        raise WarmupError(f"warm-up names {', '.join(unknown)}, not among sourceAddresses")
    return {address: listed.get(address, start) for address in pool}


def _address(text: object) -> str:
    try:
        return str(ipaddress.ip_address(str(text).strip()))
    except ValueError:
        raise WarmupError(f"warm-up source {text!r} is not an IP address") from None


def worker_config(
    warmup: Mapping[str, Any], addresses: Sequence[str], created: str | None
) -> dict[str, Any] | None:
    """The warm-up as delivery workers read it (a pool override's `warmup`, WarmupConfig);
    None without a ramp. Raises WarmupError."""
    if schedule(warmup) is None:
        return None
    table = warmup.get("table") or []
    config: dict[str, Any] = {
        "start": start_date(warmup, created).isoformat(),
        "schedule": "custom" if table else warmup["preset"],
        "sources": {
            address: "warm" if start is None else start.isoformat()
            for address, start in address_starts(warmup, addresses, created).items()
            if address
        },
    }
    if table:
        config.update(table={str(r["day"]): int(r["volume"]) for r in table}, period="day")
    return config


def state_on(ramp: Schedule | None, start: dt.date, today: dt.date) -> WarmupState:
    day = max(1, (today - start).days + 1)
    return WarmupState(day, None if ramp is None else ramp.daily(day))


def address_states(
    ramp: Schedule | None, starts: Mapping[str, dt.date | None], today: dt.date
) -> dict[str, WarmupState | None]:
    """Each address's place on the ramp; None for a warm one."""
    return {a: None if s is None else state_on(ramp, s, today) for a, s in starts.items()}


def pool_state(states: Mapping[str, WarmupState | None], pool_start: WarmupState) -> WarmupState:
    """The pool's day (its coldest address's) and cap (its addresses' together; None when one
    of them has none); `pool_start` is the pool's own, for a pool whose addresses are warm."""
    warming = [s for s in states.values() if s is not None]
    if not warming:
        return WarmupState(pool_start.day, None)
    caps = [s.cap for s in warming]
    uncapped = len(warming) < len(states) or any(c is None for c in caps)
    return WarmupState(min(s.day for s in warming), None if uncapped else sum(c or 0 for c in caps))


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
    records: Mapping[bytes, bytes],
    pool: str,
    ramp: Schedule | None,
    today: dt.date,
    source: str = "",
) -> int | None:
    """Messages the pool's workers counted today from one source address ("": a pool that
    lists none), from the warm-up ledger's latest records.

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
            rec_pool, rec_source, scope = parse_record_key(key)
            usage = decode_usage(value)
            pool_wide = (rec_pool, rec_source) == (pool, source) and scope.startswith(f"{ALL}@")
            if pool_wide and usage.window == midnight:
                total += usage.used
        except ValueError:
            continue  # not a record this operator understands
    return total
