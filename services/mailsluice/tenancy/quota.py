"""Tenant quotas: recipients accepted per clock hour and per UTC day, a plain object on an
injected clock. Every edge that accepts mail for a tenant (the HTTP API, ingest) asks `admit`
before it takes recipients and calls `charge` once Kafka has them; `add_remote` folds in what
the other replicas report, so a tenant's quota holds across all of them.

Counts are per window (hour start, day start), so a window's count is what was accepted in it;
`admit` answers how long until the window that is full rolls over.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from mailsluice.tenancy.model import Quotas

HOUR_S = 3600
DAY_S = 86400


@dataclass(frozen=True)
class OverQuota:
    window: str  # "hour" or "day"
    limit: int
    used: int
    retry_after_s: int  # whole seconds until the window rolls over (at least 1)
    requested: int = 0  # the count asked for

    @property
    def never_fits(self) -> bool:
        """More asked for at once than the window ever holds: retrying cannot help."""
        return self.requested > self.limit


class QuotaBook:
    """Accepted recipients per tenant and window: this process's own and the others' latest."""

    def __init__(self) -> None:
        self._own: dict[tuple[str, str, int], int] = defaultdict(int)
        self._remote: dict[tuple[str, str, int], dict[str, int]] = defaultdict(dict)

    @staticmethod
    def windows(now: float) -> tuple[tuple[str, int, int], ...]:
        """(name, window start, length) of the windows `now` falls in."""
        t = int(now)
        return (("hour", t - t % HOUR_S, HOUR_S), ("day", t - t % DAY_S, DAY_S))

    def used(self, tenant: str, window: str, start: int) -> int:
        key = (tenant, window, start)
        return self._own.get(key, 0) + sum(self._remote.get(key, {}).values())

    def admit(self, tenant: str, quotas: Quotas, count: int, now: float) -> OverQuota | None:
        """None when `count` more recipients fit every window; else the full window that
        rolls over last (a full day is not cured by the next hour)."""
        full: OverQuota | None = None
        for window, start, length in self.windows(now):
            limit = quotas.per_hour if window == "hour" else quotas.per_day
            if limit is None:
                continue
            used = self.used(tenant, window, start)
            if used + count > limit:
                retry = max(1, int(start + length - now + 0.999))
                if full is None or retry > full.retry_after_s:
                    full = OverQuota(window, limit, used, retry, count)
        return full

    def charge(self, tenant: str, count: int, now: float) -> None:
        for window, start, _ in self.windows(now):
            self._own[(tenant, window, start)] += count
        self.forget(now)

    def own(self, now: float) -> dict[tuple[str, str, int], int]:
        """This process's counts in the current windows (what it reports to the others)."""
        current = {(w, s) for w, s, _ in self.windows(now)}
        return {k: v for k, v in self._own.items() if (k[1], k[2]) in current}

    def add_remote(self, replica: str, tenant: str, window: str, start: int, count: int) -> None:
        """Another replica's latest count for a window (it replaces that replica's last one)."""
        self._remote[(tenant, window, start)][replica] = count

    def forget(self, now: float) -> None:
        """Drop the counts of windows over a day old (charge does it; a book only told about
        other replicas' counts calls it now and then)."""
        oldest = int(now) - DAY_S
        for book in (self._own, self._remote):
            for key in [k for k in book if k[2] < oldest]:
                del book[key]
