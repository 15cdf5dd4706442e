"""Lanes: one per (source address, routing key), each a controller and the limiter it drives.

Providers count per source IP, so every address of a pool learns its own limits for a
destination (its controller) and is held to them (its GCRA and connection count). A
destination's messages go to whichever of its lanes may send now, in turn, so each address
carries what it may send and a blocked or cold address leaves the others sending.

A lane's limiter runs the policy's own rates, which are ceilings (a per-day cap holds whatever
the controller says), and, while the controller wants less, the controller's rate with a burst
of one (providers meter smoothly). Plain data with the clock passed in, like the controller.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from mailsluice.delivery.shaping.controller import Ceilings, Change, Learned, Signal
from mailsluice.delivery.shaping.controller_tuning import TUNING
from mailsluice.delivery.shaping.limiter import DestinationLimiter, Limits, Rate
from mailsluice.delivery.shaping.steering import Fixed, Steering

# Changes kept for whoever drains them (the runtime logs and publishes them).
MAX_CHANGES = 10_000
# Learned limits kept for lanes not in memory (restored when their key comes back).
MAX_KNOWN = 50_000
# A rate that moved by more than this share since it was last published is published again:
# growth within a state (search, probing, recovery) changes no state, and a new owner of the
# key must go on from the rate in force, not from the last state change's.
REPUBLISH_STEP = 0.01
# A record written this long after a lane's last reply of its own is someone else's news: a
# lane that hears replies publishes within a status interval (10 s by default) of them.
NEWER_S = 30.0


# Whether a source address may send now (beyond its lane's own limits: its warm-up cap).
Allowed = Callable[[str], bool]


@dataclass(frozen=True)
class Policy:
    """What the policy says of one routing key: the controller's ceilings, the policy's own
    rates (kept as ceilings in the limiter) and whether the key learns."""

    ceilings: Ceilings
    rates: tuple[Rate, ...] = ()
    adaptive: bool = True


@dataclass(eq=False)
class Lane:
    source: str
    key: str
    steering: Steering
    limiter: DestinationLimiter
    rates: tuple[Rate, ...]
    applied: tuple[float, int] = (-1.0, -1)
    dirty: bool = False  # changed since its learned state was last published
    heard_at: float = -math.inf  # its last reply of its own (it trusts itself over older records)
    published: float = -1.0  # its rate when last published or restored (-1: not yet known)

    def sync(self, now: float) -> None:
        """Hand the controller's rate and connections to the limiter (keeping its state, so a
        change never grants a burst)."""
        rate, conns = self.steering.rate(now), self.steering.connections(now)
        if (rate, conns) == self.applied:
            return
        self.applied = (rate, conns)
        if abs(rate - self.published) > REPUBLISH_STEP * self.published:
            self.dirty = True
        ceiling = min((r.per_second for r in self.rates), default=math.inf)
        # At the policy's own rate its GCRA (with its burst) is the limit; below it, the
        # controller's rate with a burst of one. Last in the list, so the policy's GCRAs keep
        # their state when it comes and goes.
        below = 0.0 < rate < ceiling * (1 - 1e-9)
        own = (Rate(rate, 1.0, 1),) if below else ()
        self.limiter.configure(Limits(max(1, conns), (*self.rates, *own), None))

    def wait(self, now: float) -> float:
        """0.0: a send may start now; inf: its connections are all busy; else seconds."""
        held = self.steering.wait(now)
        if held > 0.0:
            return held
        self.sync(now)
        return self.limiter.wait_time(now)

    def try_start(self, now: float) -> bool:
        if self.wait(now) > 0.0 or not self.limiter.try_acquire(now):
            return False
        self.steering.started(now)
        return True

    def rate(self, now: float) -> float:
        return 0.0 if self.steering.wait(now) > 0.0 else self.steering.rate(now)

    def projected_rate(self, now: float, at: float) -> float:
        """The rate the lane should have at `at` as its controller grows (never above the
        policy's own rates): the slots of a backlog follow that curve, so the mail comes back
        as fast as the lane may grow."""
        if self.steering.wait(now) > 0.0:
            return 0.0
        ceiling = min((r.per_second for r in self.rates), default=math.inf)
        return min(ceiling, self.steering.projected(now, at))

    def expected_rate(self, now: float) -> float:
        """The rate to plan a backlog by: the next window's (planned at today's rate, mail
        would come back too late and leave the lane too idle to grow)."""
        return max(self.rate(now), self.projected_rate(now, now + TUNING.window))


@dataclass
class Lanes:
    """The lanes of every routing key a worker knows, created on demand."""

    sources: Sequence[str]
    policy: Callable[[str], Policy]
    make: Callable[[str, str, Ceilings, float, Learned | None], Steering]
    prime_new: bool = True
    changes: list[Change] = field(default_factory=list)
    _lanes: dict[str, list[Lane]] = field(default_factory=dict)
    _turn: dict[str, int] = field(default_factory=dict)
    _slots: dict[str, float] = field(default_factory=dict)  # latest reserved deferral slot
    _restored: dict[tuple[str, str], Learned] = field(default_factory=dict)
    created: int = 0  # keys given lanes so far (a new destination: its status goes out soon)

    def of(self, key: str, now: float) -> list[Lane]:
        lanes = self._lanes.get(key)
        if lanes is None:
            lanes = self._lanes[key] = [self._new(s, key, now) for s in self.sources or ("",)]
            self.created += 1
        for lane in lanes:
            self._note(lane, lane.steering.tick(now))
        return lanes

    def peek(self, key: str) -> list[Lane]:
        """The lanes of `key` if it has any, without creating them."""
        return self._lanes.get(key, [])

    def _new(self, source: str, key: str, now: float) -> Lane:
        pol = self.policy(key)
        learned = self._restored.get((source, key))
        if pol.adaptive:
            steering = self.make(source, key, pol.ceilings, now, learned)
        else:
            steering = Fixed(source, key, pol.ceilings)
        prime = now if self.prime_new else None
        limiter = DestinationLimiter.create(Limits(1, pol.rates, None), prime)
        return Lane(source, key, steering, limiter, pol.rates, published=steering.rate(now))

    def _note(self, lane: Lane, change: Change | None) -> None:
        if change is None:
            return
        lane.dirty = True
        self.changes.append(change)
        del self.changes[:-MAX_CHANGES]

    # --- what the scheduler asks --------------------------------------------------------------

    def _open(self, key: str, now: float, allowed: Allowed | None) -> list[Lane]:
        """The lanes of `key` whose source may send (all when none may: their waits count)."""
        lanes = self.of(key, now)
        if allowed is None:
            return lanes
        return [lane for lane in lanes if allowed(lane.source)] or lanes

    def wait_time(self, key: str, now: float, allowed: Allowed | None = None) -> float:
        return min(lane.wait(now) for lane in self._open(key, now, allowed))

    def try_start(self, key: str, now: float, allowed: Allowed | None = None) -> str | None:
        """The source a send may start from now (its slot taken), in turn, among those
        `allowed` (e.g. by their warm-up caps); None: none may."""
        lanes = self.of(key, now)
        first = self._turn.get(key, 0)
        for i in range(len(lanes)):
            lane = lanes[(first + i) % len(lanes)]
            if allowed is not None and not allowed(lane.source):
                continue
            if lane.try_start(now):
                self._turn[key] = (first + i + 1) % len(lanes)
                return lane.source
        return None

    def _lane(self, key: str, source: str) -> Lane | None:
        return next((lane for lane in self._lanes.get(key, ()) if lane.source == source), None)

    def charge(self, key: str, source: str, now: float, count: int) -> None:
        """`count` more messages went from `source` on a slot try_start gave for one."""
        if lane := self._lane(key, source):
            lane.limiter.charge(now, count)

    def finished(self, key: str, source: str, now: float) -> None:
        if lane := self._lane(key, source):
            lane.limiter.release()

    def slots(self, key: str, source: str) -> int:
        """How many sends `source` may have under way towards `key` now."""
        return lane.limiter.limits.connections if (lane := self._lane(key, source)) else 1

    def rate(self, key: str, now: float) -> float:
        """Messages per second the key may receive now, all sources together."""
        return sum(lane.rate(now) for lane in self.of(key, now))

    def backlog(self, key: str, now: float, queued: int, allowed: Allowed | None = None) -> float:
        """Seconds until the message behind `queued` others may start: each open lane (of an
        `allowed` source) takes its share by rate; with every lane held, when the first is
        released."""
        lanes = self._open(key, now, allowed)
        open_lanes = [
            (lane, lane.expected_rate(now)) for lane in lanes if lane.steering.wait(now) <= 0.0
        ]
        if not open_lanes:
            return min(lane.steering.wait(now) for lane in lanes)
        total = sum(rate for _lane, rate in open_lanes)
        waits = []
        for lane, rate in open_lanes:
            lane.sync(now)
            share = queued * rate / total if total > 0 and math.isfinite(total) else 0.0
            if rate > lane.rate(now) and math.isfinite(rate):
                waits.append(lane.limiter.rate_wait(now) + share / rate)
            else:
                waits.append(lane.limiter.backlog_time(now, math.floor(share)))
        return min(waits) if queued == 0 else max(waits)

    def reserve(self, key: str, now: float, wait: float) -> float:
        """A message leaves memory to wait `wait` seconds: it gets the next slot after those
        already given out, so deferred messages come back spread at the key's rate instead of
        all at once (and defer again). Returns its wait."""
        last = max(now, self._slots.get(key, 0.0))
        rate = sum(lane.projected_rate(now, last) for lane in self.of(key, now))
        step = 1.0 / rate if rate > 0.0 and math.isfinite(rate) else 0.0
        slot = max(now + wait, last + step)
        self._slots[key] = slot
        return slot - now

    def reserved_until(self, key: str) -> float:
        return self._slots.get(key, 0.0)

    # --- what the worker tells ----------------------------------------------------------------

    def observe(self, key: str, source: str, signal: Signal) -> Change | None:
        for lane in self.of(key, signal.at):
            if lane.source == source or len(self.sources) <= 1:
                lane.heard_at = signal.at
                change = lane.steering.observe(signal)
                self._note(lane, change)
                lane.sync(signal.at)
                return change
        return None

    def refresh(self, key: str) -> None:
        """The policy of `key` changed (or its MX rolled it up into a provider)."""
        pol = self.policy(key)
        for lane in self._lanes.get(key, ()):
            lane.steering.set_ceilings(pol.ceilings)
            lane.rates = pol.rates
            lane.applied = (-1.0, -1)

    # --- learned state, operator, memory ------------------------------------------------------

    def restore(
        self, source: str, key: str, learned: Learned, now: float, written: float = -math.inf
    ) -> None:
        """Learned limits from the control topic (this worker's own too, read back), written
        at `written` (monotonic): used when the lane is created, or at once by a lane that has
        heard no reply since well before that (the key was another worker's meanwhile: what
        it learned is newer than what this lane remembers)."""
        self._restored.pop((source, key), None)
        self._restored[(source, key)] = learned  # newest last: the first to go is the oldest
        while len(self._restored) > MAX_KNOWN:
            del self._restored[next(iter(self._restored))]
        pol = self.policy(key)
        for lane in self._lanes.get(key, ()):
            newer = written > lane.heard_at + NEWER_S
            if lane.source == source and pol.adaptive and (lane.heard_at == -math.inf or newer):
                lane.steering = self.make(source, key, pol.ceilings, now, learned)
                lane.applied, lane.published = (-1.0, -1), lane.steering.rate(now)

    def lift(self, key: str, now: float) -> None:
        """The operator resumed the key: every lane leaves a block or hold at once, keeping
        what it learned about rates and connections."""
        self._slots.pop(key, None)
        pol = self.policy(key)
        for lane in self._lanes.get(key, ()):
            if lane.steering.state in ("blocked", "probe", "hold") and pol.adaptive:
                learned = replace(lane.steering.learned(), state="steady", until=0.0)
                lane.steering = self.make(lane.source, key, pol.ceilings, now, learned)
                lane.applied = (-1.0, -1)
                lane.dirty = True

    def dirty(self) -> list[Lane]:
        out = [lane for lanes in self._lanes.values() for lane in lanes if lane.dirty]
        for lane in out:
            lane.dirty, lane.published = False, lane.applied[0]
        return out

    def all(self) -> list[Lane]:
        return [lane for key in sorted(self._lanes) for lane in self._lanes[key]]

    def keys(self) -> list[str]:
        return list(self._lanes)

    def active(self, key: str, source: str | None = None) -> int:
        """Sends under way to `key` (from `source` only, when given)."""
        lanes = self._lanes.get(key, ())
        return sum(x.limiter.active for x in lanes if source is None or x.source == source)

    def forget_idle(self, now: float, keep: Iterable[str] = ()) -> list[str]:
        """Drop keys whose lanes are idle, have learned nothing worth keeping in memory and
        have no reserved slots ahead; returns them."""
        keep_set = set(keep)
        dropped = []
        for key, lanes in list(self._lanes.items()):
            if key in keep_set or self._slots.get(key, 0.0) > now:
                continue
            if all(_idle(lane, now) for lane in lanes):
                del self._lanes[key]
                self._turn.pop(key, None)
                self._slots.pop(key, None)
                dropped.append(key)
        return dropped

    def __len__(self) -> int:
        return len(self._lanes)


def _idle(lane: Lane, now: float) -> bool:
    if not lane.limiter.idle(now) or lane.dirty:
        return False
    return lane.steering.state in ("fixed", "slow_start", "steady")
