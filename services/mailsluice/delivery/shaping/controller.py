"""The closed loop of one source address towards one destination: what it may send now.

A provider does not publish its limits; its replies say when they were crossed. Like TCP
finding a path's capacity, the controller turns classified replies into a rate, a connection
count and a number of messages per connection:

    slow_start --rate/reputation--> hold --over--> steady, at 0.96 of a proven ceiling
                                     +--over, nothing proven--> probing: search upwards
    steady --long clean stretch--> probing slowly above the ceiling (a limit may have risen)
    any --block, or a streak of server failures--> blocked --over--> probe (one send)
    probe --accepted--> slow_start (or back, after server trouble); --refused--> blocked longer

A cut starts from the rate the provider actually gave (controller_evidence: the bucket fitted
to the history, or what was accepted since its bucket was seen empty), never from the policy,
and replies of sends in flight when a cut was made never cut again. Policy values are only
ceilings and starting hints. Everything is a function of the `now` the caller passes
(monotonic seconds): no I/O, no wall clock, bounded memory.
"""

from __future__ import annotations

import math

from mailsluice.delivery.shaping.controller_evidence import Evidence
from mailsluice.delivery.shaping.controller_stops import Stops
from mailsluice.delivery.shaping.controller_tuning import TUNING, Tuning
from mailsluice.delivery.shaping.controller_types import Ceilings, Change, Learned, Signal
from mailsluice.policy.replies import ReplyClass

__all__ = ["TUNING", "Ceilings", "Change", "Controller", "Learned", "Signal", "Tuning"]

ACCEPTED = (ReplyClass.SUCCESS, ReplyClass.RECIPIENT)
CUTS = (ReplyClass.RATE, ReplyClass.REPUTATION)
# Classes that say something was wrong with the pace or the source: a window with one is not
# clean and grows nothing.
TROUBLE = (*CUTS, ReplyClass.BLOCK, ReplyClass.SERVER)


class Controller:
    """One source address towards one routing key. Feed it every final reply (`observe`),
    tell it when a send starts (`started`), call `tick` when `next_change` says; ask
    `wait`, `rate`, `connections` and `per_connection` before sending."""

    def __init__(
        self,
        source: str,
        key: str,
        ceilings: Ceilings,
        now: float,
        *,
        tuning: Tuning = TUNING,
        learned: Learned | None = None,
    ) -> None:
        self.source, self.key, self.tuning = source, key, tuning
        self.ceilings = ceilings
        self.state = "slow_start"
        self._rate = min(ceilings.rate, ceilings.start_rate or tuning.start_rate)
        self._ceiling = math.inf
        self._conns = ceilings.start_connections or tuning.start_connections
        self._learned_conns = 0
        self._per_conn = 0
        self._until = 0.0  # end of a hold or a stop
        self._last_class, self._last_reply = "", ""
        self._stops = Stops.fresh(tuning)
        self._probe_at: float | None = None  # when the single probe went
        self._evidence = Evidence(tuning, now, fresh=learned is None)
        self._proven = False  # the ceiling rests on enough messages: no more searching
        self._searched: float | None = None  # the rate before the last search step
        self._cut_class = ""  # class of the reply behind the last cut
        self._win_start, self._win_accepted, self._win_open, self._win_clean = now, 0, 0, True
        self._win_sent = 0
        self._since_cut = now  # start of the current clean stretch (for probing)
        self._started = self._answered = 0
        self._quiet_answers, self._quiet_until = 0, -math.inf
        if learned is not None:
            self._restore(learned, now)

    # --- what may be sent now ---

    def rate(self, now: float) -> float:
        """Messages per second allowed now (0.0 while stopped)."""
        if self.state == "blocked":
            return 0.0
        return min(self._rate, self.ceilings.rate)

    def projected(self, now: float, at: float) -> float:
        """The rate expected at `at` if replies stay clean and every window is used: what a
        backlog is planned by. Mail that leaves memory comes back at its planned slots, so
        planned at today's rate it would never let a window prove more."""
        rate = self.rate(now)
        if rate <= 0.0 or at <= now or self.state == "probe":
            return rate
        start = now
        if self.state == "hold":
            start, rate = self._until, self._rate_after_hold()
        factor, cap = self._growth()
        windows = min(30.0, max(0.0, at - start) / self.tuning.window)
        return max(rate, min(cap, self.ceilings.rate, rate * math.pow(factor, windows)))

    def connections(self, now: float) -> int:
        if self.state == "blocked":
            return 0
        if self.state == "probe":
            return 1
        return max(1, min(self._conns, self._conn_cap()))

    def per_connection(self) -> int:
        learned = self._per_conn or self.ceilings.per_connection
        return max(1, min(self.ceilings.per_connection, learned))

    def wait(self, now: float) -> float:
        """0.0: a send may start; > 0: seconds until one may (inf: a reply will tell)."""
        if self.state == "blocked":
            return max(self._until - now, 1e-3)
        if self.state == "probe" and self._probe_at is not None:
            return math.inf
        return 0.0

    def started(self, now: float) -> None:
        """A send started: counted so that replies of sends in flight at a cut are known, and
        in "probe" the single probe is taken."""
        self._started += 1
        self._win_sent += 1
        self._evidence.started(now)
        if self.state == "probe" and self._probe_at is None:
            self._probe_at = now

    # --- replies and time ---

    def observe(self, s: Signal) -> Change | None:
        timed = self.tick(s.at)
        self._answered += 1
        if s.cls in TROUBLE:
            self._win_clean = False
        self._win_open = max(self._win_open, s.open_connections)
        if s.cls in ACCEPTED:
            change = self._accepted(s)
        elif s.cls in CUTS:
            change = self._cut(s)
        elif s.cls is ReplyClass.BLOCK:
            change = self._block(s)
        elif s.cls is ReplyClass.SERVER:
            change = self._server(s)
        elif s.cls is ReplyClass.CONNECTIONS:
            change = self._connections_learned(s)
        else:
            change = self._per_connection_learned(s)
        if change is None or timed is None:
            return change or timed
        return Change(**{**change.__dict__, "from_state": timed.from_state})

    def tick(self, now: float) -> Change | None:
        """Time-driven moves: window growth, hold over, stop over (then one probe)."""
        before = self.state
        if self.state == "blocked" and now >= self._until:
            self.state, self._probe_at = "probe", None
        elif self.state == "probe" and self._probe_at is not None:
            if now - self._probe_at >= self.tuning.probe_timeout:
                self._probe_at = None  # lost: let another one go
        elif self.state == "hold" and now >= self._until:
            self._to_steady(now)
        if now >= self._win_start + self.tuning.window:
            self._end_window(now)
        if self.state == before:
            return None
        return self._change(before, self._last_class, self._last_reply, now)

    def next_change(self, now: float) -> float | None:
        """When `tick` may next change something (None: only a reply can)."""
        window_end = self._win_start + self.tuning.window
        if self.state in ("blocked", "hold"):
            return min(self._until, window_end)
        if self.state == "probe":
            return None if self._probe_at is None else self._probe_at + self.tuning.probe_timeout
        return window_end

    # --- persistence and policy ---

    def learned(self) -> Learned:
        return Learned(
            *(self._rate, self._ceiling, self._conns, self._learned_conns, self._per_conn),
            *(self.state, self._until, self._last_class, self._last_reply),
            self._stops.block_interval,
        )

    def set_ceilings(self, c: Ceilings) -> None:
        """New policy values: the learned state stays, the ceilings bound it from now on."""
        self.ceilings = c
        self._rate = min(self._rate, c.rate)
        self._conns = max(1, min(self._conns, c.connections))

    # --- internals ---

    def _restore(self, learned: Learned, now: float) -> None:
        self._rate = max(self.tuning.floor, min(learned.rate, self.ceilings.rate))
        self._ceiling = learned.ceiling
        self._conns = max(1, min(learned.connections, self.ceilings.connections))
        self._learned_conns = learned.learned_connections
        self._per_conn = learned.per_connection
        self._last_class, self._last_reply = learned.last_class, learned.last_reply
        self._proven = math.isfinite(learned.ceiling)
        if learned.last_class in CUTS:
            self._cut_class = learned.last_class
        self._stops.block_interval = learned.block_interval or self.tuning.block_initial
        self.state, self._until = learned.state, learned.until
        if self.state == "blocked":
            self._stops.by = "block" if learned.last_class == ReplyClass.BLOCK else "server"
            self._stops.resume = "steady"
        if self.state in ("blocked", "hold") and self._until <= now:
            self.tick(now)

    def _conn_cap(self) -> int:
        return min(self.ceilings.connections, self._learned_conns or self.ceilings.connections)

    def _accepted(self, s: Signal) -> Change | None:
        self._evidence.accepted(s.at)
        self._win_accepted += 1
        self._stops.server_run = 0
        if self.state != "probe" or self._probe_at is None:
            return None
        before = self.state
        if self._stops.by == "server":
            self.state = self._stops.resume
        else:
            base = self._ceiling if math.isfinite(self._ceiling) else 2 * self._rate
            self._rate = max(self.tuning.floor, min(self.ceilings.rate, base / 2))
            self.state = "slow_start"
        self._begin_window(s.at)
        return self._change(before, s.cls, s.reply, s.at)

    def _cut(self, s: Signal) -> Change | None:
        """Multiplicative decrease from the achieved rate, once per round of sends.

        Soon after a cut (within a window), replies of sends in flight at the cut never cut
        again, and later ones only when what was accepted since the episode began proves the
        rate still too high (right after a cut the bucket is empty, so a send at a fine rate
        may still be deferred). Such a follow-up corrects the rate with `beta_rate` and keeps
        the hold: the provider spoke once, the reply class acted on its first reply."""
        self._last_class, self._last_reply = str(s.cls), s.reply
        follow_up = s.at < self._quiet_until and self.state != "probe"
        if self.state == "blocked" or (
            follow_up
            and (
                self._answered <= self._quiet_answers
                or not self._evidence.still_too_fast(s.at, self._rate)
            )
        ):
            self._deferred(s.at)
            return None
        before, t = self.state, self.tuning
        if before == "probe":
            estimate = self._rate  # nothing was sent while stopped: the rate before the stop
        else:
            estimate, self._proven = self._evidence.estimate(
                s.at, self._rate, before, self._searched
            )
        self._searched = None
        self._deferred(s.at)
        if follow_up:
            beta = t.beta_rate
        elif s.cls is ReplyClass.REPUTATION:
            beta, self._until = t.beta_reputation, s.at + t.hold_reputation
        else:
            beta = t.beta_start if before == "slow_start" else t.beta_rate
            self._until = s.at + t.hold_rate
        if not follow_up:
            self._cut_class = s.cls
        # An unproven ceiling is no ceiling: the rate searches for it (and persists none).
        self._ceiling = max(estimate, t.floor) if self._proven else math.inf
        self._rate = max(t.floor, min(self._rate, beta * estimate))
        self.state = "hold"
        self._quiet_answers, self._quiet_until = self._started, s.at + t.window
        self._since_cut = s.at
        self._begin_window(s.at)
        return self._change(before, s.cls, s.reply, s.at)

    def _deferred(self, at: float) -> None:
        self._evidence.deferred(at, max(0, self._started - self._answered))

    def _block(self, s: Signal) -> Change | None:
        self._last_class, self._last_reply = str(s.cls), s.reply
        interval = self._stops.on_block(self.state, s.at, s.min_block)
        return None if interval is None else self._stop(s, interval)

    def _server(self, s: Signal) -> Change | None:
        self._last_class, self._last_reply = str(s.cls), s.reply
        interval = self._stops.on_server(self.state, self._probe_at is not None)
        return None if interval is None else self._stop(s, interval)

    def _stop(self, s: Signal, interval: float) -> Change:
        before = self.state
        self.state, self._until, self._probe_at = "blocked", s.at + interval, None
        self._stops.server_run = 0
        return self._change(before, s.cls, s.reply, s.at)

    def _connections_learned(self, s: Signal) -> Change | None:
        self._last_class, self._last_reply = str(s.cls), s.reply
        learned = max(1, s.open_connections - 1)
        if self._learned_conns and learned >= self._learned_conns:
            return None
        self._learned_conns = learned
        self._conns = min(self._conns, learned)
        if self.state == "probe":
            self._probe_at = None  # the probe never reached the provider: another one may go
        return self._change(self.state, s.cls, s.reply, s.at)

    def _per_connection_learned(self, s: Signal) -> Change | None:
        self._last_class, self._last_reply = str(s.cls), s.reply
        if self.state == "probe":
            self._probe_at = None
        learned = max(1, s.sent_on_connection)
        if self._per_conn and learned >= self._per_conn:
            return None
        self._per_conn = learned
        return self._change(self.state, s.cls, s.reply, s.at)

    def _to_steady(self, now: float) -> None:
        """Hold over: straight back under a proven ceiling after a rate reply; otherwise the
        rate climbs back window by window (`_grow`)."""
        self.state = "steady"
        self._rate = self._rate_after_hold()
        self._since_cut = now

    def _rate_after_hold(self) -> float:
        if self._cut_class != ReplyClass.REPUTATION and self._proven:
            return max(self._rate, min(self.ceilings.rate, self.tuning.steady * self._ceiling))
        return self._rate

    def _growth(self) -> tuple[float, float]:
        """(factor per used clean window, rate it stops at) of the current state: `_grow`'s
        steps, for planning."""
        t = self.tuning
        target = min(self.ceilings.rate, t.steady * self._ceiling)
        if self.state == "slow_start":
            return t.growth, target
        if not self._proven:
            return t.search, self.ceilings.rate
        if self._rate < target:
            return t.recover, target
        if self.state == "probing":
            return 1 + t.probe_per_min * t.window / 60, self.ceilings.rate
        return 1.0, self._rate

    def _begin_window(self, now: float) -> None:
        self._win_start, self._win_accepted, self._win_open, self._win_clean = now, 0, 0, True
        self._win_sent = 0

    def _end_window(self, now: float) -> None:
        """A window is over: grow what a clean window proved, then start the next one."""
        t = self.tuning
        used = self._win_sent + 1 >= t.busy * self._rate * (now - self._win_start)
        if self._win_clean and self.state in ("slow_start", "steady", "probing"):
            if self._win_open >= self._conns and self._conns < self._conn_cap():
                # Doubling only up to a few: every connection is a send in flight, and at the
                # first deferral all of those in flight are deferred as well.
                step = self._conns if self._conns < t.fast_connections else 1
                self._conns = min(self._conn_cap(), self._conns + step)
            if used and self._evidence.calm(now):
                self._grow(now)
        if not self._win_clean:
            self._since_cut = now
        if not self._win_accepted:
            self._evidence.idle(now)
        self._begin_window(now)

    def _grow(self, now: float) -> None:
        """One clean, used window, one step of `_growth`: slow start doubles up to just under a
        known ceiling; with none proven the rate searches upwards, so the next deferral comes
        at a small overshoot and proves it; under a proven ceiling it climbs back; at it, after
        a long clean stretch, it probes slowly above it."""
        t = self.tuning
        factor, cap = self._growth()
        if self.state == "slow_start":
            self._rate = min(cap, self._rate * factor)
            if self._rate >= cap:
                self.state = "steady"
        elif not self._proven:
            if self._rate < cap:
                self.state, self._searched = "probing", self._rate
                self._rate = min(cap, self._rate * factor)
        elif self.state == "steady" and factor == 1.0:
            reputation = self._cut_class == ReplyClass.REPUTATION
            patience = t.probe_after_reputation if reputation else t.probe_after
            patience = max(patience, t.probe_after_messages / max(self._rate, t.floor))
            if now - self._since_cut >= patience:
                self.state = "probing"
        else:
            self._rate = min(cap, self._rate * factor)

    def _change(self, before: str, cls: str, reply: str, at: float) -> Change:
        rate, connections = self.rate(at), self.connections(at)
        return Change(self.source, self.key, before, self.state, cls, reply, rate, connections, at)
