"""The shaping controller against a provider model, as a discrete-event simulation.

One or more source addresses send N queued messages to one provider (support.provider_model).
Each source has its own Controller, a GCRA pacing its sends at the controller's rate, and its
own SMTP connections (up to the controller's count, each carrying up to its messages per
connection). No real time: events run in order on a simulated clock, with SMTP latencies drawn
from a seeded random generator, so a run is a pure function of its seed.

The dialogue per message: connect (once per connection), MAIL, RCPT, end of DATA. A 421 closes
the connection; a per-connection reply makes the sender reconnect at once and resend without
waiting for pacing; a deferred message goes back to the head of the queue and waits for
capacity like any other (never for a retry schedule).
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from mailsluice.delivery.shaping.controller import Ceilings, Change, Controller, Signal, Tuning
from mailsluice.delivery.shaping.controller_tuning import TUNING
from mailsluice.delivery.shaping.limiter import Gcra, Rate
from mailsluice.policy.replies import ReplyClass
from support.provider_model import ProviderLimits, ProviderModel, ProviderTexts, Reply

CONNECT_S = (0.08, 0.12)  # TCP, greeting and EHLO
MESSAGE_S = (0.05, 0.2)  # MAIL to the end of DATA
# Shares of a message's time at which the MAIL, RCPT and DATA replies come.
MAIL_AT, RCPT_AT = 0.2, 0.4
LINGER_S = 30.0  # an idle connection is kept this long for reuse (the transport's idle_keep_s)
# Sends are paced evenly: a slot lost waiting for a free connection is not made up.
PACING_BURST = 1
# What the policy says when it knows nothing of the provider: generous ceilings.
POLICY = Ceilings(rate=math.inf, connections=20, per_connection=100)
BIN_S = 10.0  # accepted messages are counted in bins of this width
# Rates are measured over windows this long, and long enough to hold WINDOW_MESSAGES at the
# limit: over fewer, one message more or less is a tenth.
WINDOW_S = 60.0
WINDOW_MESSAGES = 30
KEEP_CHANGES = 200  # state changes kept per run, for the messages of failed assertions


def effective_limit(limits: ProviderLimits, policy: Ceilings = POLICY) -> float:
    """Messages per second one source can have accepted at best: the provider's rate, or what
    its connection cap carries at the simulated latencies when that is less.

    A bucket of one token refuses a message that reaches it less than 1/rate after the last
    one; sends reach it after a latency that varies by `spread`, so no sender that cannot see
    the provider's clock does better than one message per 1/rate + spread."""
    per_conn = min(limits.per_connection, policy.per_connection)
    seconds = sum(MESSAGE_S) / 2 + sum(CONNECT_S) / 2 / per_conn
    connections = min(limits.connections, policy.connections)
    rate = limits.rate_per_s
    if limits.burst == 1:
        spread = (MESSAGE_S[1] - MESSAGE_S[0]) * (RCPT_AT if limits.defer_at == "rcpt" else 1.0)
        rate = 1 / (1 / rate + spread)
    return min(rate, connections / seconds, policy.rate)


@dataclass
class _Conn:
    source: _Source
    sent: int = 0
    open: bool = False  # greeting received
    busy: bool = True
    idle_since: float = 0.0


@dataclass
class _Message:
    paid: bool = False  # already paced: a resend after a per-connection reply


@dataclass
class _Source:
    ip: str
    ctl: Controller
    gcra: Gcra
    conns: list[_Conn] = field(default_factory=list)
    wake_at: float = math.inf


@dataclass(frozen=True)
class Result:
    """One run: what the sources did and how close to the provider's limit they stayed."""

    limit: float  # effective limit of all sources, messages per second
    accepted: int
    attempts: int  # messages that asked the provider for a token
    deferred: int
    blocks: int
    refused_connections: int
    end: float  # when the last message was accepted
    bins: tuple[int, ...]  # accepted per BIN_S
    changes: tuple[Change, ...]  # the first state changes the controllers reported

    @property
    def deferral_pct(self) -> float:
        return 100.0 * self.deferred / max(1, self.attempts)

    def converged(self, fraction: float = 0.9) -> float:
        """When the first measuring window began that accepted at least `fraction` of the
        limit: the controller had found it (inf: never)."""
        span, per_window = self._window(fraction)
        for first in range(len(self.bins) - span):
            if sum(self.bins[first : first + span]) >= per_window:
                return first * BIN_S
        return math.inf

    def settled(self, fraction: float = 0.9) -> float:
        """From when on every measuring window accepted at least `fraction` of the limit, up
        to the last full bin (inf: never)."""
        span, per_window = self._window(fraction)
        start = math.inf
        for first in range(len(self.bins) - 1 - span, -1, -1):
            if sum(self.bins[first : first + span]) < per_window:
                break
            start = first * BIN_S
        return start

    def efficiency(self, since: float) -> float:
        """Accepted per second from `since` to the last full bin (the last is the queue
        running dry), over the limit."""
        first, last = int(since / BIN_S), len(self.bins) - 1
        if last <= first:
            return 0.0
        return sum(self.bins[first:last]) / ((last - first) * BIN_S) / self.limit

    def _window(self, fraction: float) -> tuple[int, float]:
        span = math.ceil(max(WINDOW_S, WINDOW_MESSAGES / self.limit) / BIN_S)
        return span, self.limit * span * BIN_S * fraction


class Simulation:
    """Events on a simulated clock: sources, their connections, the provider."""

    def __init__(
        self,
        model: ProviderModel,
        texts: ProviderTexts,
        sources: list[str],
        messages: int,
        *,
        seed: int,
        policy: Ceilings = POLICY,
        tuning: Tuning = TUNING,
    ) -> None:
        self.model, self.rng, self.now = model, random.Random(seed), 0.0
        self.queue: deque[_Message] = deque(_Message() for _ in range(messages))
        self.events: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self.accepted: list[float] = []
        self.changes: list[Change] = []
        self.classes = {ip: _classes(texts, ip) for ip in sources}
        self.sources = [
            _Source(
                ip, Controller(ip, "dest", policy, 0.0, tuning=tuning), Gcra(Rate(1, 1), now=0.0)
            )
            for ip in sources
        ]

    # --- the loop

    def run(self, until: float = 6 * 3600.0) -> None:
        for src in self.sources:
            self._at(0.0, lambda s=src: self._dispatch(s))
        total = len(self.queue)
        while self.events and len(self.accepted) < total:
            when, _, action = heapq.heappop(self.events)
            if when > until:
                break
            self.now = when
            action()

    def result(self, limits: ProviderLimits) -> Result:
        stats = self.model.stats()
        end = self.accepted[-1] if self.accepted else 0.0
        bins = [0] * (int(end / BIN_S) + 1)
        for t in self.accepted:
            bins[int(t / BIN_S)] += 1
        return Result(
            limit=effective_limit(limits) * len(self.sources),
            accepted=stats.accepted,
            attempts=stats.attempts,
            deferred=stats.deferred,
            blocks=stats.blocks,
            refused_connections=stats.refused_connections,
            end=end,
            bins=tuple(bins),
            changes=tuple(self.changes),
        )

    def _at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self.events, (when, next(self._seq), action))

    def _wake(self, src: _Source, when: float) -> None:
        if when < src.wake_at:
            src.wake_at = when
            self._at(when, lambda: self._woken(src, when))

    def _woken(self, src: _Source, when: float) -> None:
        if src.wake_at == when:
            src.wake_at = math.inf
        self._dispatch(src)

    # --- a source decides what to send

    def _dispatch(self, src: _Source) -> None:
        now, ctl = self.now, src.ctl
        self._note(ctl.tick(now))
        following = ctl.next_change(now)
        if following is not None:
            self._wake(src, max(following, now + 1e-6))
        while self.queue:
            wait = ctl.wait(now)
            if wait > 0:
                if math.isfinite(wait):
                    self._wake(src, now + wait)
                return
            msg = self.queue[0]
            if not msg.paid:
                rate = ctl.rate(now)
                if rate <= 0:
                    return
                if src.gcra.rate.count != rate:
                    src.gcra.configure(Rate(rate, 1, PACING_BURST))
                pace = src.gcra.wait_time(now)
                if pace > 0:
                    self._wake(src, now + pace)
                    return
            conn = self._connection(src)
            if conn is None:
                return  # every connection is busy: a finished message wakes the source
            self.queue.popleft()
            if not msg.paid:
                src.gcra.try_acquire(now)
            ctl.started(now)
            if conn.open:
                self._send(conn, msg)
            else:
                took = self.rng.uniform(*CONNECT_S)
                self._at(now + took, lambda c=conn, m=msg: self._connect(c, m))

    def _connection(self, src: _Source) -> _Conn | None:
        """An idle open connection, or a new one if the controller allows another."""
        idle = [c for c in src.conns if c.open and not c.busy]
        if idle:
            conn = idle[0]
            conn.busy = True
            return conn
        if len(src.conns) >= src.ctl.connections(self.now):
            return None
        conn = _Conn(src)
        src.conns.append(conn)
        return conn

    # --- one message on one connection

    def _send(self, conn: _Conn, msg: _Message) -> None:
        conn.busy = True
        took = self.rng.uniform(*MESSAGE_S)
        self._at(self.now + took * MAIL_AT, lambda: self._mail(conn, msg, took))

    def _connect(self, conn: _Conn, msg: _Message) -> None:
        src = conn.source
        reply = self.model.connect(src.ip, self.now)
        if reply.code == 220:
            conn.open = True
            self._send(conn, msg)
            return
        opened = sum(1 for c in src.conns if c.open)
        src.conns.remove(conn)
        self._reply(src, reply, "greeting", open_connections=opened + 1, sent=0)
        self.queue.appendleft(_Message(paid=True))
        self._dispatch(src)

    def _mail(self, conn: _Conn, msg: _Message, took: float) -> None:
        reply = self.model.mail(conn.source.ip, conn.sent, self.now)
        if reply.code == 250:
            at = self.now + took * (RCPT_AT - MAIL_AT)
            self._at(at, lambda: self._rcpt(conn, msg, took))
            return
        self._reply(conn.source, reply, "mail", conn=conn)
        self._close(conn)
        self.queue.appendleft(_Message(paid=True))
        self._dispatch(conn.source)

    def _rcpt(self, conn: _Conn, msg: _Message, took: float) -> None:
        reply = self.model.rcpt(conn.source.ip, self.now)
        if reply.code == 250:
            self._at(self.now + took * (1 - RCPT_AT), lambda: self._data(conn))
        else:
            self._deferred(conn, reply, "rcpt")

    def _data(self, conn: _Conn) -> None:
        reply = self.model.data(conn.source.ip, self.now)
        if reply.code != 250:
            self._deferred(conn, reply, "data")
            return
        self.accepted.append(self.now)
        self._reply(conn.source, reply, "data", conn=conn)
        conn.sent += 1
        self._finished(conn)

    def _deferred(self, conn: _Conn, reply: Reply, phase: str) -> None:
        self._reply(conn.source, reply, phase, conn=conn)
        conn.sent += 1
        self.queue.appendleft(_Message())
        if reply.code == 421:
            self._close(conn)
            self._dispatch(conn.source)
        else:
            self._finished(conn)

    def _finished(self, conn: _Conn) -> None:
        """The connection is free: the next message, or linger a little, or close."""
        src = conn.source
        if conn.sent >= src.ctl.per_connection():
            self._close(conn)
        else:
            conn.busy, conn.idle_since = False, self.now
            self._at(self.now + LINGER_S, lambda since=self.now: self._linger_over(conn, since))
        self._dispatch(src)

    def _linger_over(self, conn: _Conn, since: float) -> None:
        if conn.open and not conn.busy and conn.idle_since == since:
            self._close(conn)

    def _close(self, conn: _Conn) -> None:
        if conn.open:
            self.model.disconnect(conn.source.ip, self.now)
            conn.open = False
        if conn in conn.source.conns:
            conn.source.conns.remove(conn)

    def _reply(
        self,
        src: _Source,
        reply: Reply,
        phase: str,
        *,
        conn: _Conn | None = None,
        open_connections: int = 0,
        sent: int = 0,
    ) -> None:
        cls = ReplyClass.SUCCESS if reply.ok else self.classes[src.ip][reply.line]
        if conn is not None:
            open_connections = sum(1 for c in src.conns if c.open)
            sent = conn.sent
        signal = Signal(
            cls,
            self.now,
            phase,
            reply.line,
            open_connections=open_connections,
            sent_on_connection=sent,
        )
        self._note(src.ctl.observe(signal))

    def _note(self, change: Change | None) -> None:
        if change is not None and len(self.changes) < KEEP_CHANGES:
            self.changes.append(change)


def _classes(texts: ProviderTexts, ip: str) -> dict[str, ReplyClass]:
    return {reply.for_source(ip).line: cls for cls, reply in texts.by_class().items()}


def simulate(
    limits: ProviderLimits,
    texts: ProviderTexts,
    *,
    messages: int,
    sources: int = 1,
    seed: int = 0,
    tuning: Tuning = TUNING,
) -> Result:
    """Send `messages` from `sources` addresses through controllers to one provider."""
    ips = [f"127.0.0.{21 + i}" for i in range(sources)]
    sim = Simulation(ProviderModel(limits, texts), texts, ips, messages, seed=seed, tuning=tuning)
    sim.run()
    return sim.result(limits)
