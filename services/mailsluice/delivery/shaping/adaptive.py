"""Adaptive backoff: remote replies drive each destination's state.

    normal --throttle rule--> throttled (hold) --duration--> recovering (steps) --> normal
    any    --suspend rule---> suspended until t (a throttle keeps running underneath)

Feed every reply of a send with `observe()`; it returns what fired (including "bounce", which
the caller applies to that message). `adjust()` turns a destination's base limits into the
limits to use now. The clock is whatever the caller passes (monotonic seconds in the worker),
so every rule is testable with a simulated clock.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from mailsluice.policy.backoff import BackoffRule, default_rules, normalize_text

Mode = Literal["normal", "throttled", "recovering", "suspended"]
# Hit times kept per (destination, rule): bounded by the rule's trigger count.
_MAX_TRACKED = 10_000


@dataclass(frozen=True)
class Fired:
    """A rule that triggered."""

    rule: str
    action: Literal["suspend", "throttle", "bounce"]
    until: float  # end of the suspension or of the throttle's hold (now for bounce)
    reason: str


@dataclass
class _Throttle:
    rule: str
    started: float
    hold_until: float
    rate: float | None  # absolute messages/s during the hold
    rate_factor: float | None
    connections: int | None
    steps: int
    step: float

    def end(self) -> float:
        return self.hold_until + self.steps * self.step

    def progress(self, now: float) -> float:
        """0.0 during the hold, rising to 1.0 (normal) over the recovery steps."""
        if now < self.hold_until:
            return 0.0
        if self.steps <= 0 or self.step <= 0:
            return 1.0
        done = math.floor((now - self.hold_until) / self.step) + 1
        return min(1.0, done / (self.steps + 1)) if done <= self.steps else 1.0


@dataclass
class DestinationState:
    suspended_until: float = 0.0
    suspend_reason: str = ""
    throttle: _Throttle | None = None
    last_error: str = ""
    last_error_at: float = 0.0
    hits: dict[str, deque[float]] = field(default_factory=dict)

    def mode(self, now: float) -> Mode:
        if now < self.suspended_until:
            return "suspended"
        if self.throttle is not None and now < self.throttle.end():
            return "throttled" if now < self.throttle.hold_until else "recovering"
        return "normal"


@dataclass(frozen=True)
class Adjusted:
    """Limits to use now. rate is messages per second (inf: unlimited)."""

    mode: Mode
    rate: float
    connections: int
    suspended_until: float


class AdaptiveEngine:
    """Destination states keyed by routing key, driven by backoff rules."""

    def __init__(self, rules: Iterable[BackoffRule] | None = None) -> None:
        self.rules = tuple(default_rules() if rules is None else rules)
        self._states: dict[str, DestinationState] = {}

    def state(self, key: str) -> DestinationState:
        found = self._states.get(key)
        if found is None:
            found = self._states[key] = DestinationState()
        return found

    def peek(self, key: str) -> DestinationState | None:
        return self._states.get(key)

    def observe(
        self, key: str, provider: str | None, reply: tuple[int, str, str], now: float
    ) -> list[Fired]:
        """Feed one reply (code, enhanced, text); returns the rules that triggered on it."""
        code, enhanced, text = reply
        if 200 <= code < 300:
            return []
        state = self.state(key)
        clean = normalize_text(code, enhanced, text)
        state.last_error = f"{code} {enhanced} {clean}".strip()
        state.last_error_at = now
        fired = []
        for rule in self.rules:
            if not rule.applies_to(provider) or not rule.matches(code, enhanced, clean):
                continue
            if self._count_hit(state, rule, now):
                fired.append(self._act(state, rule, now))
        return fired

    def _count_hit(self, state: DestinationState, rule: BackoffRule, now: float) -> bool:
        if rule.trigger.immediate:
            return True
        hits = state.hits.setdefault(rule.name, deque(maxlen=min(rule.trigger.count, _MAX_TRACKED)))
        hits.append(now)
        while hits and hits[0] <= now - rule.trigger.window:
            hits.popleft()
        if len(hits) >= rule.trigger.count:
            hits.clear()  # the next trigger needs a fresh set of hits
            return True
        return False

    def _act(self, state: DestinationState, rule: BackoffRule, now: float) -> Fired:
        until = now + rule.duration
        if rule.action == "suspend":
            if until > state.suspended_until:
                state.suspended_until = until
                state.suspend_reason = rule.name
        elif rule.action == "throttle":
            state.throttle = self._merge_throttle(state.throttle, rule, now)
            until = state.throttle.hold_until
        else:
            until = now
        return Fired(rule.name, rule.action, until, state.last_error)

    @staticmethod
    def _merge_throttle(old: _Throttle | None, rule: BackoffRule, now: float) -> _Throttle:
        """A new throttle restarts the hold; while one is active the tighter limits stay."""
        new = _Throttle(
            rule.name,
            now,
            now + rule.duration,
            rule.rate,
            rule.rate_factor,
            rule.connection_limit,
            rule.recovery_steps,
            rule.recovery_step,
        )
        if old is None or now >= old.end():
            return new
        new.hold_until = max(new.hold_until, old.hold_until)
        new.rate = _min_opt(new.rate, old.rate)
        new.rate_factor = _min_opt(new.rate_factor, old.rate_factor)
        new.connections = _min_opt(new.connections, old.connections)
        return new

    def adjust(self, key: str, base_rate: float, base_connections: int, now: float) -> Adjusted:
        """The limits a destination gets now from its base limits."""
        state = self._states.get(key)
        if state is None:
            return Adjusted("normal", base_rate, base_connections, 0.0)
        mode = state.mode(now)
        rate, conns = base_rate, base_connections
        t = state.throttle
        if t is not None and now < t.end():
            low_rate = base_rate
            if t.rate is not None:
                low_rate = min(low_rate, t.rate)
            if t.rate_factor is not None:
                low_rate = min(low_rate, base_rate * t.rate_factor)
            low_conns = min(conns, t.connections) if t.connections is not None else conns
            p = t.progress(now)
            rate = _geometric(low_rate, base_rate, p)
            conns = max(1, min(base_connections, round(low_conns + (conns - low_conns) * p)))
        elif t is not None:
            state.throttle = None
        return Adjusted(mode, rate, conns, state.suspended_until if mode == "suspended" else 0.0)

    def next_change(self, key: str, now: float) -> float | None:
        """When the destination's throttled limits next change (end of the hold, next recovery
        step), so mail deferred under a throttle comes back when it could go faster."""
        state = self._states.get(key)
        t = state.throttle if state is not None else None
        if t is None or now >= t.end():
            return None
        if now < t.hold_until:
            return t.hold_until
        steps_done = math.floor((now - t.hold_until) / t.step) + 1 if t.step > 0 else t.steps
        return min(t.end(), t.hold_until + steps_done * t.step)

    # --- operator commands ---------------------------------------------------------------

    def suspend(self, key: str, until: float, reason: str = "operator") -> None:
        state = self.state(key)
        state.suspended_until = until
        state.suspend_reason = reason

    def resume(self, key: str) -> None:
        """End a suspension and any throttle now (the operator knows better)."""
        state = self._states.get(key)
        if state is not None:
            state.suspended_until = 0.0
            state.suspend_reason = ""
            state.throttle = None
            state.hits.clear()

    def keys(self) -> list[str]:
        return list(self._states)

    def forget_idle(self, now: float, keep: Iterable[str] = ()) -> list[str]:
        """Drop states that are back to normal with no pending hits (bounds memory); returns
        the keys dropped."""
        keep_set = set(keep)
        longest = max((r.trigger.window for r in self.rules), default=0.0)
        dropped = []
        for key, state in list(self._states.items()):
            if key in keep_set or state.mode(now) != "normal":
                continue
            if state.last_error_at <= now - longest:
                del self._states[key]
                dropped.append(key)
        return dropped


N = TypeVar("N", int, float)


def _min_opt(a: N | None, b: N | None) -> N | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def _geometric(low: float, high: float, p: float) -> float:
    """From low (p=0) to high (p=1) in equal ratios, so 1/min -> 100/s recovers smoothly."""
    if p >= 1.0 or low >= high:
        return high
    top = high if math.isfinite(high) else low * 1e6  # "unlimited" recovers to a million-fold
    return float(low * (top / low) ** p)
