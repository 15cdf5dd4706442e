"""Rate and concurrency limits per destination: GCRA with a stated burst, and a limiter set.

Every limit here is smooth: the generic cell rate algorithm (GCRA) lets a message go when its
theoretical arrival time allows it, so a destination at R/min receives one message every 60/R
seconds after an initial burst of at most `burst` messages, never R messages at the top of each
minute. Time is always passed in (seconds on any monotonic scale), so every limiter is testable
with a simulated clock.

A destination configured with N shards ("google#0".."google#N-1") spreads over N partitions, so N
workers each own one shard: each shard gets 1/N of the rate and of the connections
(`Limits.divided`; the engine's lanes divide their ceilings the same way).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# Float sums of the emission interval drift by ~1e-16; a nanosecond is no real wait.
EPSILON = 1e-9


@dataclass(frozen=True)
class Rate:
    """`count` messages per `period` seconds, of which up to `burst` may go back to back."""

    count: float
    period: float
    burst: int = 1

    def __post_init__(self) -> None:
        if not (self.count > 0 and self.period > 0 and self.burst >= 1):
            raise ValueError(f"invalid rate {self}")

    @property
    def per_second(self) -> float:
        return self.count / self.period

    def scaled(self, factor: float) -> Rate:
        """This rate times `factor` (burst shrinks with it, never below 1)."""
        return Rate(self.count * factor, self.period, max(1, math.floor(self.burst * factor)))

    def __str__(self) -> str:
        return f"{self.count:g}/{self.period:g}s,burst={self.burst}"


class Gcra:
    """Generic cell rate algorithm for one rate.

    With emission interval T = period/count and tolerance tau = (burst - 1) * T, a message may go
    at `now` when the theoretical arrival time tat <= now + tau; taking it moves tat to
    max(tat, now) + T. An idle limiter has credit for exactly `burst` back-to-back messages.
    """

    def __init__(self, rate: Rate, *, now: float | None = None) -> None:
        self._tat = -math.inf
        self.configure(rate)
        if now is not None:
            self.prime(now)

    def configure(self, rate: Rate) -> None:
        """Change the rate keeping the state, so a change never grants a fresh burst."""
        self.rate = rate
        self.interval = rate.period / rate.count
        self.tau = (rate.burst - 1) * self.interval

    def prime(self, now: float) -> None:
        """Start without burst credit: the first message may go now, the next ones at the
        steady rate (used when a destination is handed over by a rebalance)."""
        self._tat = max(self._tat, now + self.tau)

    def wait_time(self, now: float) -> float:
        """Seconds until one message may go (0.0: now)."""
        wait = self._tat - self.tau - now
        return wait if wait > EPSILON else 0.0

    def try_acquire(self, now: float) -> bool:
        if self.wait_time(now) > 0.0:
            return False
        self._tat = max(self._tat, now) + self.interval
        return True

    def charge(self, now: float, count: int) -> None:
        """Count `count` more messages that went without asking (one slot carried several)."""
        if count > 0:
            self._tat = max(self._tat, now) + count * self.interval

    def backlog_time(self, now: float, queued: int) -> float:
        """Seconds until the message behind `queued` others may go, if nothing else limits."""
        wait = max(self._tat, now) + queued * self.interval - self.tau - now
        return wait if wait > EPSILON else 0.0

    def idle(self, now: float) -> bool:
        """True when the limiter holds no state worth keeping (full burst credit)."""
        return self._tat <= now


@dataclass(frozen=True)
class Limits:
    """What one destination (one routing key) may receive."""

    connections: int = 10
    message_rates: tuple[Rate, ...] = (Rate(100, 1, 10),)
    connection_rate: Rate | None = None

    def __post_init__(self) -> None:
        if self.connections < 1:
            raise ValueError("connections must be >= 1")

    def divided(self, shards: int) -> Limits:
        """The share of one shard when the destination is spread over `shards` partitions."""
        if shards <= 1:
            return self
        return Limits(
            max(1, math.ceil(self.connections / shards)),
            tuple(_share(r, shards) for r in self.message_rates),
            None if self.connection_rate is None else _share(self.connection_rate, shards),
        )


def _share(rate: Rate, shards: int) -> Rate:
    return Rate(rate.count / shards, rate.period, max(1, rate.burst // shards))


@dataclass
class DestinationLimiter:
    """All limits of one destination: message rates, connection rate, concurrency."""

    limits: Limits
    rates: list[Gcra] = field(default_factory=list)
    conn_rate: Gcra | None = None
    active: int = 0

    @classmethod
    def create(cls, limits: Limits, now: float | None = None) -> DestinationLimiter:
        out = cls(limits)
        out.configure(limits, now)
        return out

    def configure(self, limits: Limits, now: float | None = None) -> None:
        """Apply new limits, keeping each limiter's state (no burst from a change)."""
        self.limits = limits
        old = self.rates
        self.rates = []
        for i, rate in enumerate(limits.message_rates):
            if i < len(old):
                old[i].configure(rate)
                self.rates.append(old[i])
            else:
                self.rates.append(Gcra(rate, now=now))
        if limits.connection_rate is None:
            self.conn_rate = None
        elif self.conn_rate is None:
            self.conn_rate = Gcra(limits.connection_rate, now=now)
        else:
            self.conn_rate.configure(limits.connection_rate)

    def prime(self, now: float) -> None:
        for gcra in self.rates:
            gcra.prime(now)
        if self.conn_rate is not None:
            self.conn_rate.prime(now)

    def rate_wait(self, now: float) -> float:
        return max((g.wait_time(now) for g in self.rates), default=0.0)

    def wait_time(self, now: float) -> float:
        """0.0: a message may start now; inf: all connections busy; else seconds to wait."""
        if self.active >= self.limits.connections:
            return math.inf
        return self.rate_wait(now)

    def try_acquire(self, now: float) -> bool:
        if self.wait_time(now) > 0.0:
            return False
        for gcra in self.rates:
            gcra.try_acquire(now)
        self.active += 1
        return True

    def charge(self, now: float, count: int) -> None:
        for gcra in self.rates:
            gcra.charge(now, count)

    def release(self) -> None:
        if self.active > 0:
            self.active -= 1

    def backlog_time(self, now: float, queued: int) -> float:
        return max((g.backlog_time(now, queued) for g in self.rates), default=0.0)

    def connect_wait(self, now: float) -> float:
        """Seconds until a new connection may be opened under the connection rate."""
        return 0.0 if self.conn_rate is None else self.conn_rate.wait_time(now)

    def try_connect(self, now: float) -> bool:
        return self.conn_rate is None or self.conn_rate.try_acquire(now)

    def idle(self, now: float) -> bool:
        gcras = [*self.rates, *([self.conn_rate] if self.conn_rate else [])]
        return self.active == 0 and all(g.idle(now) for g in gcras)

    def current_rate(self) -> float:
        """The tightest message rate in messages per second (inf when unlimited)."""
        return min((g.rate.per_second for g in self.rates), default=math.inf)
