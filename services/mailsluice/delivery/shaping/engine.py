"""The shaping engine behind the worker's scheduler: policy limits, adaptive backoff, warm-up.

`PolicyShaper` is what the scheduler asks (scheduler.Shaper) when a destination's next message
may start, and it hears every reply of a send (`observe`). Per routing key it combines

- the shaping policy (shaping.toml merged with pool overrides) -> connections and GCRA rates,
  divided among shards for "name#n" keys;
- adaptive backoff (backoff.toml) -> suspended, or rate / connections cut and recovering;
- the pool's warm-up -> a cap per hour or day (waits until the next period when over it).

A destination that must wait longer than the scheduler's horizon (suspended, over its warm-up
cap, deeply throttled) gets a long estimate_wait, so its messages go to a delay topic instead of
holding memory, and never delay other destinations. Times: `now` is the scheduler's monotonic
clock; warm-up days and operator commands use wall time from the injected `wall` clock.

A worker run without a shaping policy uses `uniform_policy`: one rule for every destination.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

from mailsluice.contracts.control import Command, DestinationRow
from mailsluice.delivery.shaping.adaptive import AdaptiveEngine, Fired
from mailsluice.delivery.shaping.limiter import LimiterSet, Limits, Rate
from mailsluice.delivery.shaping.warmup import WarmupTracker
from mailsluice.metrics.shaping import ShapingFlow as flow_metrics
from mailsluice.policy.backoff import BackoffRule, normalize_text
from mailsluice.policy.shaping import Policy, PolicyFile, Rule, Shaping, default_policy

# While the warm-up ledger is not yet restored, a warming pool's mail waits this long and asks
# again (short: it stays in memory rather than going to a delay topic).
WARMUP_NOT_READY_WAIT_S = 1.0


def base_limits(shaping: Shaping) -> Limits:
    """Limiter limits of a resolved policy rule."""
    rates = tuple(Rate(r.count, r.period, shaping.burst_of(r)) for r in shaping.message_rates)
    conn = shaping.connection_rate
    conn_rate = None if conn is None else Rate(conn.count, conn.period, shaping.burst_of(conn))
    return Limits(shaping.connection_limit, rates, conn_rate)


def uniform_policy(defaults: Rule) -> Policy:
    """One rule for every destination: `defaults` over the shipped policy's [defaults], with no
    provider, domain or pool rules."""
    merged = {
        **default_policy().model.defaults.model_dump(exclude_none=True),
        **defaults.model_dump(exclude_none=True),
    }
    return Policy(PolicyFile(defaults=Rule(**merged)))


class PolicyShaper:
    """The scheduler's shaper (scheduler.Shaper) for one pool; see the module docstring."""

    def __init__(
        self,
        policy: Policy,
        pool: str,
        *,
        rules: Iterable[BackoffRule] | None = None,
        warmup: WarmupTracker | None = None,
        wall: Callable[[], float] = time.time,
        prime_new: bool = True,
    ) -> None:
        """`rules` None: the shipped backoff rules. `prime_new` False lets a destination seen
        for the first time start with its burst credit."""
        self.policy = policy
        self.pool = pool
        self.adaptive = AdaptiveEngine(rules)
        self.warmup = warmup
        self.wall = wall
        # By default new limiters start without burst credit: a destination handed over by a
        # rebalance may just have had its burst from the previous owner.
        self.limiters = LimiterSet(
            self._base, shards=lambda k: self.policy.resolve(k, pool).shards, prime_new=prime_new
        )
        self._dirty: set[str] = set()
        self.fired: list[tuple[str, Fired]] = []  # rules fired since the caller last drained
        # False until the warm-up usage of this period is restored from the ledger (a
        # restarted worker must not send today's cap again)
        self.warmup_ready = True
        self._mx: dict[str, tuple[str, ...]] = {}

    # --- policy -----------------------------------------------------------------------------

    def shaping(self, key: str) -> Shaping:
        return self.policy.resolve(key, self.pool, self._mx.get(key, ()))

    def provider(self, key: str) -> str | None:
        return self.shaping(key).provider

    def learn_mx(self, key: str, mx_hosts: Iterable[str]) -> None:
        """MX hosts of a hosted domain, so it rolls up into its provider's rules."""
        hosts = tuple(mx_hosts)
        if self._mx.get(key) != hosts:
            self._mx[key] = hosts
            self._dirty.add(key)

    def _base(self, base_key: str) -> Limits:
        return base_limits(self.shaping(base_key))

    def _sync(self, key: str, now: float) -> None:
        """Apply policy changes and the adaptive state to the destination's limiter (keeping
        its GCRA state, so no change grants a burst)."""
        if self.adaptive.peek(key) is None and key not in self._dirty:
            return
        self._dirty.discard(key)
        base = self.limiters.limits_for(key)
        rate = min((r.per_second for r in base.message_rates), default=math.inf)
        adj = self.adaptive.adjust(key, rate, base.connections, now)
        factor = 1.0 if math.isinf(rate) or adj.rate >= rate else adj.rate / rate
        limits = Limits(
            adj.connections,
            tuple(r.scaled(factor) for r in base.message_rates),
            base.connection_rate,
        )
        self.limiters.refresh(key, limits)

    # --- what the scheduler asks (scheduler.Shaper) -----------------------------------------

    def _blocked_for(self, key: str, now: float, queued: int = 0) -> float:
        """Seconds the destination is held regardless of its rate: suspension, warm-up cap."""
        wait = 0.0
        state = self.adaptive.peek(key)
        if state is not None and now < state.suspended_until:
            wait = state.suspended_until - now
        if self.warmup is not None:
            if not self.warmup_ready:
                return max(wait, WARMUP_NOT_READY_WAIT_S)
            wait = max(wait, self.warmup.wait_for(self.provider(key), self.wall(), queued))
        return wait

    def wait_time(self, key: str, now: float) -> float:
        self.limiters.get(key, now)
        self._sync(key, now)
        blocked = self._blocked_for(key, now)
        if blocked > 0.0:
            return blocked
        return self.limiters.wait_time(key, now)

    def try_start(self, key: str, now: float) -> bool:
        if self.wait_time(key, now) > 0.0:
            return False
        if self.warmup is not None:
            decision = self.warmup.try_take(self.provider(key), self.wall())
            if decision.action != "allow":
                # wait_time said the cap has room, so this is rare (a cap shrinking between
                # the two calls): wait; the scheduler overflows the job once it is overdue
                return False
        return self.limiters.try_acquire(key, now)

    def overflow_pool(self, key: str, now: float, queued: int) -> str:
        """The warm-up's overflow pool when the message behind `queued` others is over
        today's cap (and the ledger is restored: until then nobody knows)."""
        tracker = self.warmup
        if tracker is None or not self.warmup_ready or tracker.plan.over_cap != "overflow":
            return ""
        if tracker.wait_for(self.provider(key), self.wall(), queued) <= 0.0:
            return ""
        return tracker.plan.overflow_pool

    def finished(self, key: str, now: float) -> None:
        self.limiters.release(key)

    def estimate_wait(self, key: str, now: float, queued: int) -> float:
        self.limiters.get(key, now)
        self._sync(key, now)
        backlog = self.limiters.backlog_time(key, now, queued)
        change = self.adaptive.next_change(key, now)
        if change is not None:
            # computed at the throttled rate: come back when the rate rises and ask again
            backlog = min(backlog, change - now)
        return max(self._blocked_for(key, now, queued), backlog)

    def forget_idle(self, now: float, keep: Iterable[str] = ()) -> None:
        keep_list = list(keep)
        # a destination whose adaptive state goes must get its base limits back first
        self._dirty.update(self.adaptive.forget_idle(now, keep_list))
        self.limiters.forget_idle(now, keep_list)
        self._dirty.intersection_update(self.limiters.keys())

    # --- what the worker tells and asks ------------------------------------------------------

    def observe(self, key: str, now: float, codes: list[tuple[int, str, str]]) -> None:
        """Every reply (code, enhanced, text) of a send to `key`: backoff rules that match
        change the destination's limits at once."""
        provider = self.provider(key)
        for reply in codes:
            for fired in self.adaptive.observe(key, provider, reply, now):
                self.fired.append((key, fired))
                if fired.action == "suspend":
                    flow_metrics.SUSPENSIONS.labels(self.pool, fired.rule).inc()
        del self.fired[:-1000]  # bounded if nobody drains it
        self._sync(key, now)

    def should_bounce(self, key: str, reply: tuple[int, str, str]) -> bool:
        """True when a bounce rule matches this transient reply (e.g. "Retrying will NOT
        succeed"): the worker should bounce the recipient instead of retrying."""
        code, enhanced, text = reply
        provider = self.provider(key)
        clean = normalize_text(code, enhanced, text)
        return any(
            r.action == "bounce" and r.applies_to(provider) and r.matches(code, enhanced, clean)
            for r in self.adaptive.rules
        )

    def active(self, key: str) -> int:
        return self.limiters.active(key)

    def __len__(self) -> int:
        return len(self.limiters)

    # --- operator commands and status ---------------------------------------------------------

    def apply_command(self, cmd: Command, now: float) -> bool:
        """Apply a control command for this pool; True when it concerns this worker's pool."""
        if cmd.pool != self.pool:
            return False
        if cmd.action == "suspend":
            self.adaptive.suspend(cmd.key, now + max(0.0, cmd.until - self.wall()), "operator")
            flow_metrics.SUSPENSIONS.labels(self.pool, "operator").inc()
        else:  # resume and retry-now both lift holds; retry-now also wakes deferred mail
            self.adaptive.resume(cmd.key)
        self._dirty.add(cmd.key)
        self._sync(cmd.key, now)
        return True

    def rows(self, now: float, queued: Callable[[str], int]) -> list[DestinationRow]:
        """A snapshot of known destinations for `mailsluice destinations list`."""
        wall = self.wall()
        out = []
        for key in sorted(set(self.limiters.keys()) | set(self.adaptive.keys())):
            dest = self.limiters.get(key, now)
            self._sync(key, now)
            state = self.adaptive.peek(key)
            mode = state.mode(now) if state is not None else "normal"
            until = 0.0
            rule = ""
            if state is not None and mode == "suspended":
                until, rule = wall + state.suspended_until - now, state.suspend_reason
            elif state is not None and state.throttle is not None and mode != "normal":
                t = state.throttle
                until = wall + (t.hold_until if mode == "throttled" else t.end()) - now
                rule = t.rule
            out.append(
                DestinationRow(
                    key,
                    mode,
                    queued(key),
                    dest.active,
                    dest.current_rate(),
                    dest.limits.connections,
                    until,
                    state.last_error if state is not None else "",
                    rule,
                )
            )
        return out
