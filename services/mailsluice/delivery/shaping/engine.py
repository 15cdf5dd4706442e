"""The shaping engine behind the worker's scheduler: policy ceilings, learned limits, warm-up.

`PolicyShaper` is what the scheduler asks (scheduler.Shaper) when a destination's next message
may start and from which source address, and it hears every reply of a send (`observe`). Per
routing key it combines

- the shaping policy (shaping.toml merged with pool overrides) -> ceilings: connections, rates,
  messages per connection, divided among shards for "name#n" keys;
- one lane per source address (lanes.py), each with a controller (controller.py) that learns
  the destination's real limits from its replies, classified by the reply rules (replies.toml);
- the warm-up of each source address -> a cap per hour or day; an address over its cap sends
  nothing more this period, the others go on; when all are over it, waits until the next one;
- operator commands: suspend until t, resume.

A destination that must wait longer than the scheduler's horizon (suspended, blocked, over its
warm-up cap, slowed down) gets a long estimate, so its messages go to a delay topic instead of
holding memory; each gets the next free slot (`reserve`), so they come back spread at the rate
the destination takes. Times: `now` is the scheduler's monotonic clock; warm-up days, operator
commands and published records use wall time from the injected `wall` clock.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from mailsluice.contracts.control import Command
from mailsluice.contracts.routing import base_of, split_key
from mailsluice.delivery.shaping.controller import Ceilings, Change, Controller, Learned
from mailsluice.delivery.shaping.lanes import Allowed, Lanes, Policy
from mailsluice.delivery.shaping.limiter import Rate
from mailsluice.delivery.shaping.signals import ResultView, Verdict, read_results
from mailsluice.delivery.shaping.steering import Steering
from mailsluice.delivery.shaping.warmup import PoolWarmup
from mailsluice.metrics.shaping import ShapingFlow as flow_metrics
from mailsluice.policy.replies import ReplyRule, default_replies
from mailsluice.policy.shaping import Policy as PolicyData
from mailsluice.policy.shaping import PolicyFile, Rule, Shaping, default_policy

# While the warm-up ledger is not yet restored, a warming pool's mail waits this long and asks
# again (short: it stays in memory rather than going to a delay topic).
WARMUP_NOT_READY_WAIT_S = 1.0


def uniform_policy(defaults: Rule) -> PolicyData:
    """One rule for every destination: `defaults` over the shipped policy's [defaults], with no
    provider, domain or pool rules."""
    merged = {
        **default_policy().model.defaults.model_dump(exclude_none=True),
        **defaults.model_dump(exclude_none=True),
    }
    return PolicyData(PolicyFile(defaults=Rule(**merged)))


def lane_policy(shaping: Shaping, shards: int, *, adaptive: bool) -> Policy:
    """A resolved policy rule as one lane's ceilings; a shard gets 1/shards of them."""
    rates = tuple(
        Rate(r.count / shards, r.period, max(1, shaping.burst_of(r) // shards))
        for r in shaping.message_rates
    )
    start = shaping.start_rate
    ceilings = Ceilings(
        rate=min((r.per_second for r in rates), default=math.inf),
        connections=max(1, math.ceil(shaping.connection_limit / shards)),
        per_connection=shaping.max_deliveries_per_connection,
        start_rate=None if start is None else start.per_second / shards,
        start_connections=(
            None if shaping.start_connections is None else -(-shaping.start_connections // shards)
        ),
    )
    return Policy(ceilings, rates, adaptive and shaping.adaptive)


@dataclass(frozen=True)
class Suspension:
    until: float  # monotonic
    reason: str


class PolicyShaper:
    """The scheduler's shaper (scheduler.Shaper) for one pool; see the module docstring."""

    def __init__(
        self,
        policy: PolicyData,
        pool: str,
        *,
        rules: Sequence[ReplyRule] | None = None,
        sources: Sequence[str] = (),
        warmup: PoolWarmup | None = None,
        wall: Callable[[], float] = time.time,
        prime_new: bool = True,
        adaptive: bool = True,
    ) -> None:
        """`rules` None: the shipped reply rules. `adaptive` False holds every destination to
        its policy as configured. `prime_new` False lets a destination seen for the first time
        start with its burst credit."""
        self.policy = policy
        self.pool = pool
        self.rules = tuple(default_replies() if rules is None else rules)
        self.warmup = warmup
        self.wall = wall
        self.adaptive = adaptive
        self.lanes = Lanes(list(sources), self._lane_policy, self._controller, prime_new)
        self.suspended: dict[str, Suspension] = {}
        # False until the warm-up usage of this period is restored from the ledger (a
        # restarted worker must not send today's cap again)
        self.warmup_ready = True
        self.rule_of: dict[tuple[str, str], str] = {}  # (source, key) -> rule of last change
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
            self.lanes.refresh(key)

    def _lane_policy(self, key: str) -> Policy:
        sharded = split_key(key)[1] is not None
        shaping = self.shaping(key)
        return lane_policy(shaping, shaping.shards if sharded else 1, adaptive=self.adaptive)

    @staticmethod
    def _controller(
        source: str, key: str, ceilings: Ceilings, now: float, learned: Learned | None
    ) -> Steering:
        return Controller(source, key, ceilings, now, learned=learned)

    def per_connection(self, key: str, source: str) -> int:
        """Messages a connection from `source` may carry to `key` (learned, else policy)."""
        for lane in self.lanes.peek(key):
            if lane.source == source or not source:
                return lane.steering.per_connection()
        return self.shaping(key).max_deliveries_per_connection

    # --- what the scheduler asks (scheduler.Shaper) -----------------------------------------

    def _blocked_for(self, key: str, now: float, queued: int = 0) -> float:
        """Seconds the destination is held whatever its lanes say: suspension, the warm-up
        caps of all its source addresses."""
        held = self.suspension(key, now)
        wait = 0.0 if held is None else held.until - now
        if self.warmup is not None:
            if not self.warmup_ready:
                return max(wait, WARMUP_NOT_READY_WAIT_S)
            wait = max(wait, self.warmup.wait_for(self.provider(key), self.wall(), queued))
        return wait

    def _allowed(self, key: str) -> Allowed | None:
        """Which source addresses may send to `key` as far as their warm-up caps go."""
        warmup = self.warmup
        if warmup is None:
            return None
        provider, wall = self.provider(key), self.wall()
        return lambda source: warmup.allows(source, provider, wall)

    def wait_time(self, key: str, now: float) -> float:
        blocked = self._blocked_for(key, now)
        if blocked > 0.0:
            return blocked
        return self.lanes.wait_time(key, now, self._allowed(key))

    def try_start(self, key: str, now: float) -> str | None:
        if self._blocked_for(key, now) > 0.0:
            return None
        allowed = self._allowed(key)
        if self.lanes.wait_time(key, now, allowed) > 0.0:
            return None
        source = self.lanes.try_start(key, now, allowed)
        if source is not None and self.warmup is not None:
            decision = self.warmup.try_take(source, self.provider(key), self.wall())
            if decision.action != "allow":
                # the source was allowed a moment ago, so this is rare (a cap shrinking
                # between the two calls): give its slot back and wait; the scheduler
                # overflows the job once it is overdue
                self.lanes.finished(key, source, now)
                return None
        return source

    def finished(self, key: str, source: str, now: float) -> None:
        self.lanes.finished(key, source, now)

    def slots(self, key: str, source: str) -> int:
        """How many sends `source` may have under way towards `key` now."""
        return self.lanes.slots(key, source)

    def charge(self, key: str, source: str, now: float, count: int) -> None:
        """A send that try_start allowed made `count` more transactions than one (a bulk
        message split per recipient): the destination's rates pay for them, so the next
        message waits as long as if each had asked."""
        self.lanes.charge(key, source, now, count)

    def estimate_wait(self, key: str, now: float, queued: int) -> float:
        backlog = self.lanes.backlog(key, now, queued, self._allowed(key))
        return max(self._blocked_for(key, now, queued), backlog)

    def reserve(self, key: str, now: float, wait: float) -> float:
        return self.lanes.reserve(key, now, wait)

    def reserved_until(self, key: str) -> float:
        return self.lanes.reserved_until(key)

    def why_held(self, key: str, now: float, queued: int = 0) -> tuple[str, str]:
        """Why a message of `key` behind `queued` others leaves memory: (held, error text for
        its record); the queued ones count against the warm-up caps."""
        held = self.suspension(key, now)
        if held is not None:
            until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._wall_at(held.until, now)))
            return "suspended", f"destination suspended by {held.reason} until {until}"
        if self.warmup is not None and self._blocked_for(key, now, queued) > 0.0:
            return (
                "warmup",
                "held: the warm-up cap for this destination is spent on every address of the pool",
            )
        allowed = self._allowed(key)
        lanes = self.lanes.of(key, now)
        # the addresses whose warm-up caps still have room are the ones that count here
        lanes = [lane for lane in lanes if allowed is None or allowed(lane.source)] or lanes
        if all(lane.steering.wait(now) > 0.0 for lane in lanes):
            last = max(lanes, key=lambda lane: lane.steering.learned().last_reply)
            reply = last.steering.learned().last_reply
            return "blocked", f"destination blocks this sender for now: {reply}".strip(": ")
        rate = self.lanes.rate(key, now)
        return "throttled", f"throttled: waiting for capacity at {rate * 60:.4g}/min"

    def overflow_pool(self, key: str, now: float, queued: int) -> str:
        """The warm-up's overflow pool when the message behind `queued` others is over
        today's caps of every address (and the ledger is restored: until then nobody knows)."""
        warmup = self.warmup
        if warmup is None or not self.warmup_ready or warmup.over_cap != "overflow":
            return ""
        if warmup.wait_for(self.provider(key), self.wall(), queued) <= 0.0:
            return ""
        return warmup.overflow_pool

    def rationed(self, key: str, now: float) -> bool:
        warmup = self.warmup
        return warmup is not None and warmup.rationed(self.provider(key), self.wall())

    def forget_idle(self, now: float, keep: Iterable[str] = ()) -> None:
        for key in self.lanes.forget_idle(now, keep):
            self._mx.pop(key, None)
            for source in self.lanes.sources or ("",):
                self.rule_of.pop((source, key), None)

    # --- what the worker tells ------------------------------------------------------------

    def observe(self, key: str, now: float, results: Sequence[ResultView]) -> Verdict:
        """Every per-recipient result of a send to `key`: each distinct reply is classified
        and moves the controller of the source it came from; the verdict says which
        recipients bounce (the provider says retrying will not succeed) and which wait for
        capacity instead of the failure schedule."""
        signals, verdict = read_results(
            results,
            now,
            self.provider(key),
            self.rules,
            lambda source: self.lanes.active(key, source),
        )
        for source, signal, rule in signals:
            if self.lanes.observe(key, source, signal) is not None:
                self.rule_of[(source, key)] = rule
        if verdict.held and not self._lane_policy(key).adaptive:
            # nothing here slows down for them: they take the failure schedule instead
            verdict = Verdict(verdict.bounce, frozenset())
        return verdict

    def drain_changes(self) -> list[tuple[Change, str]]:
        """State changes since the last call, each with the reply rule behind it."""
        changes, self.lanes.changes = self.lanes.changes, []
        return [(c, self.rule_of.get((c.source, c.key), "")) for c in changes]

    def active(self, key: str) -> int:
        return self.lanes.active(key)

    def __len__(self) -> int:
        return len(self.lanes)

    # --- operator commands ------------------------------------------------------------------

    def apply_command(self, cmd: Command, now: float) -> bool:
        """Apply a control command for this pool; True when it concerns this worker's pool."""
        if cmd.pool != self.pool:
            return False
        if cmd.action == "suspend":
            until = now + max(0.0, cmd.until - self.wall())
            self.suspended[cmd.key] = Suspension(until, cmd.by or "operator")
            flow_metrics.SUSPENSIONS.labels(self.pool, "operator").inc()
        else:  # resume and retry-now both lift every hold; retry-now also wakes deferred mail
            self.suspended.pop(cmd.key, None)
            for key in dict.fromkeys([cmd.key, *self.lanes.keys()]):
                if _covers(cmd.key, key):
                    self.suspended.pop(key, None)
                    self.lanes.lift(key, now)
        return True

    def suspension(self, key: str, now: float) -> Suspension | None:
        """The operator's suspension of `key`, or of the provider it is a shard of (a
        command for "google" covers "google#3"); one that is over is dropped."""
        for name in dict.fromkeys((key, base_of(key))):
            held = self.suspended.get(name)
            if held is None:
                continue
            if now < held.until:
                return held
            del self.suspended[name]
        return None

    def _wall_at(self, mono: float, now: float) -> float:
        return self.wall() + mono - now


def _covers(commanded: str, key: str) -> bool:
    """A command for a provider also concerns its shards ("google" covers "google#3")."""
    return key == commanded or base_of(key) == commanded
