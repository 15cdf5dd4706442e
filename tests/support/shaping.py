"""Shaping in tests: shapers with the same limits for every destination (the worker's default
shaper) or per domain, held to them as configured, and a delivery worker's memory side on a
simulated clock."""

from __future__ import annotations

import heapq
import itertools
import json
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mailsluice.delivery.shaping.engine import PolicyShaper
from mailsluice.delivery.shaping.scheduler import Deferral, Job, Scheduler
from mailsluice.delivery.shaping.settings import delivery_defaults
from mailsluice.delivery.worker.dispatch import MAX_SLEEP_S
from mailsluice.delivery.worker.outcomes import throttled_delay
from mailsluice.delivery.worker.settings import DeliverySettings
from mailsluice.delivery.worker.shaper import default_shaper
from mailsluice.policy.shaping import PoolSection, load_policy_text

Limits = tuple[int, float, int]  # connections, messages per second, burst
Reply = tuple[int, str, str]


def uniform(
    conc: int = 10,
    rate: float = 100.0,
    burst: int = 10,
    *,
    domains: Mapping[str, Limits] | None = None,
    pool: str = "default",
    wall: Callable[[], float] = time.time,
) -> PolicyShaper:
    """The shaper of a worker given none (MAILSLUICE_DELIVERY_DEST_* = conc, rate, burst), with
    other limits for the routing keys in `domains`; nothing learned."""
    settings = DeliverySettings(
        pool=pool, dest_max_concurrency=conc, dest_max_rate=rate, dest_burst=burst
    )
    shaper = default_shaper(settings, wall)
    if not domains:
        return shaper
    section = PoolSection(
        domain={d: delivery_defaults(*limits) for d, limits in (domains or {}).items()}
    )
    policy = shaper.policy.with_pool(pool, section)
    return PolicyShaper(policy, pool, wall=wall, prime_new=False, adaptive=False)


def per_minute(starts: Iterable[float], t0: float, t1: float) -> float:
    """Sends per minute among `starts` in [t0, t1)."""
    return len([t for t in starts if t0 <= t < t1]) / (t1 - t0) * 60


def worst_window(times: Iterable[float], window: float) -> int:
    """Most sends within any `window` seconds."""
    ordered = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(ordered):
        while ordered[j] <= t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


@dataclass(frozen=True)
class SimResult:
    """One recipient's result of a simulated send (shaping.signals.ResultView)."""

    recipient: str
    code: int
    enhanced: str
    text: str
    phase: str
    source: str
    sent_on_connection: int = 0


class SimulatedWorker:
    """A delivery worker's memory side on a simulated clock: the real Scheduler in front of a
    real PolicyShaper, driven as the worker's dispatch loop drives them (start what take()
    allows, defer what is overdue, sleep until next_wake() but at most MAX_SLEEP_S, wake on
    every arrival and finished send).

    A send takes `send_s`; its reply, `reply(key, item, started, source)` (None: 250), is
    observed when it ends, before its slot is freed; a reply the shaper says is about the
    destination's limits puts the message back in the queue (`held` counts them), as the
    worker does. A deferral comes back as the worker would fetch it again: after
    outcomes.throttled_delay plus `return_s` (delay topic and mover latency), due at its slot;
    one naming an overflow pool leaves for good (`overflowed`)."""

    def __init__(
        self,
        shaper: PolicyShaper,
        *,
        horizon: float = DeliverySettings().short_horizon_s,
        urgent: Callable[[Any], bool] | None = None,
        send_s: float = 0.002,
        return_s: float = 0.0,
        reply: Callable[[str, Any, float, str], Reply | None] | None = None,
        start: float = 0.0,
    ) -> None:
        self.shaper = shaper
        self.horizon = horizon
        self.scheduler: Scheduler[Any] = Scheduler(shaper, horizon, urgent=urgent)
        self.send_s = send_s
        self.return_s = return_s
        self.reply = reply
        self.now = start
        self.starts: dict[str, list[float]] = defaultdict(list)
        self.sent: list[tuple[float, Any]] = []  # (started, item) in order
        self.deferred = 0
        self.held = 0
        self.overflowed: list[tuple[str, Any]] = []
        self._seq = itertools.count()
        # (fetched at, seq, key, item, ready at, slotted)
        self._arrivals: list[tuple[float, int, str, Any, float, bool]] = []
        self._running: list[tuple[float, int, Job[Any]]] = []

    def enqueue(self, key: str, items: Iterable[Any], at: float | None = None) -> None:
        """Records of `key` fetched at `at` (default: now), in order."""
        when = self.now if at is None else at
        for item in items:
            heapq.heappush(self._arrivals, (when, next(self._seq), key, item, when, False))

    def run_until(self, end: float) -> None:
        """Everything that happens up to `end` (inclusive)."""
        while True:
            self._step()
            sleep = min(self.scheduler.next_wake(self.now), MAX_SLEEP_S)
            events = [self.now + sleep]
            if self._arrivals:
                events.append(self._arrivals[0][0])
            if self._running:
                events.append(self._running[0][0])
            after = max(min(events), self.now + 1e-6)
            if after > end:
                self.now = end
                return
            self.now = after

    def hand_back(self) -> list[Any]:
        """Stop: the items not started (queued, or on their way back from a delay topic) are
        left to the next owner; sends under way still end."""
        left = self.scheduler.remove(lambda _item: False)
        left += [arrival[3] for arrival in sorted(self._arrivals)]
        self._arrivals.clear()
        return left

    def _step(self) -> None:
        now = self.now
        while self._running and self._running[0][0] <= now:
            ended, _n, job = heapq.heappop(self._running)
            started = ended - self.send_s
            answer = self.reply(job.key, job.item, started, job.source) if self.reply else None
            code, enhanced, text = answer or (250, "2.0.0", "ok")
            phase = "data" if code < 300 else "rcpt"
            result = SimResult("r", code, enhanced, text, phase, job.source)
            verdict = self.shaper.observe(job.key, ended, [result])
            self.scheduler.done(job, ended)
            if verdict.held:
                self.held += 1
                self._defer(self.scheduler.push(job.key, job.item, ended))
        while self._arrivals and self._arrivals[0][0] <= now:
            _t, _n, key, item, ready_at, slotted = heapq.heappop(self._arrivals)
            self._defer(self.scheduler.push(key, item, now, ready_at, slotted=slotted))
        for job in self.scheduler.take(now):
            self.starts[job.key].append(now)
            self.sent.append((now, job.item))
            heapq.heappush(self._running, (now + self.send_s, next(self._seq), job))
        for deferral in self.scheduler.overdue(now):
            self._defer(deferral)

    def _defer(self, deferral: Deferral[Any] | None) -> None:
        if deferral is None:
            return
        if deferral.overflow_pool:
            self.overflowed.append((deferral.overflow_pool, deferral.job.item))
            return
        self.deferred += 1
        back = self.now + throttled_delay(deferral.wait, self.horizon) + self.return_s
        slot = self.now + deferral.wait
        arrival = (back, next(self._seq), deferral.job.key, deferral.job.item, slot, True)
        heapq.heappush(self._arrivals, arrival)


# --- the limited-destination scenario of the rate tests (simulated and wall-clock) ---------------

RATE_PER_MIN = 600  # 10 per second
BURST = 5

POLICY = f"""
[defaults]
connection_limit = 20
max_message_rate = "6000/s"
max_deliveries_per_connection = 100
max_recipients_per_transaction = 100
tls = "opportunistic"

[domain."limited.example"]
max_message_rate = "{RATE_PER_MIN}/min,burst={BURST}"

[domain."rep.example"]
max_message_rate = "{RATE_PER_MIN}/min,burst=1"
"""


def limited_shaper(*, prime_new: bool = True, adaptive: bool = False) -> PolicyShaper:
    """The scenario's policy in pool "p": held to it as configured unless `adaptive`."""
    return PolicyShaper(load_policy_text(POLICY), "p", prime_new=prime_new, adaptive=adaptive)


def warmup_overrides(target: str, cap: int) -> str:
    """MAILSLUICE_SHAPING_POOL_OVERRIDES of a pool on its first warm-up day today, `cap`
    messages a day, the rest overflowing to pool `target`; fast and fixed (not adaptive)."""
    warmup = {
        "schedule": "custom",
        "start": datetime.now(UTC).date().isoformat(),
        "table": {"1": cap},
        "period": "day",
        "over_cap": "overflow",
        "overflow_pool": target,
    }
    defaults = {"max_message_rate": "1000/s", "adaptive": False}
    return json.dumps({"defaults": defaults, "warmup": warmup})
