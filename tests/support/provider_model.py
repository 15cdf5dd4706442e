"""A mail provider's sending limits as a pure model, for simulated-clock tests of shaping and for
the SMTP simulator (support/provider_sim.py) that serves it over the wire.

Providers count per source IP. Each source has a token bucket (capacity `burst`, refilled at
`rate_per_min`), a cap on its concurrent connections and on the messages one connection may
carry, and a penalty: more than `penalty_deferrals` rate deferrals within `penalty_window_s`
blocks the source for `block_s` (the block reply at connect and at MAIL). Replies are the
canonical provider texts of the shared design (PROVIDERS), with the source's IP filled in.

    model = ProviderModel(ProviderLimits(rate_per_min=60, burst=5, connections=2,
                                         per_connection=10), PROVIDERS["isp"][0])
    model.connect("127.0.0.21", now)            # 220, or the connections / block reply
    model.mail("127.0.0.21", sent_on_connection=0, now=now)
    model.rcpt("127.0.0.21", now)               # 250, or the rate reply (defer_at "rcpt")
    model.data("127.0.0.21", now)               # 250, or the rate reply (defer_at "data")
    model.disconnect("127.0.0.21", now)         # only after a 220 from connect
    model.stats("127.0.0.21").accepted

No clock inside: every call takes `now` (seconds, any monotonic origin). Memory per source is
bounded (a deferral window of at most penalty_deferrals + 1 times); sources are what the test
sends from, a handful of addresses.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, field, fields, replace
from typing import Literal

from mailsluice.delivery.transport.replies import split_reply
from mailsluice.policy.replies import ReplyClass

DeferAt = Literal["rcpt", "data"]


@dataclass(frozen=True)
class Reply:
    """One reply, split as the delivery transport reports it (code, enhanced, text)."""

    code: int
    enhanced: str  # RFC 3463, "4.0.0" style when the server sends none (then `bare`)
    text: str
    bare: bool = False  # sent without an enhanced status code

    @classmethod
    def parse(cls, line: str) -> Reply:
        """A reply line as sent, e.g. "421 4.7.0 too many connections from your IP"."""
        code = int(line[:3])
        enhanced, text = split_reply(code, line[4:])
        return cls(code, enhanced, text, bare=not line[4:].startswith(enhanced))

    @property
    def line(self) -> str:
        """The reply line on the wire."""
        if self.bare:
            return f"{self.code} {self.text}"
        return f"{self.code} {self.enhanced} {self.text}"

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300

    def for_source(self, ip: str) -> Reply:
        """The reply with the "{ip}" placeholder of the canonical texts filled in."""
        return replace(self, text=self.text.replace("{ip}", ip)) if "{ip}" in self.text else self


R220_READY = Reply(220, "2.0.0", "ESMTP ready", bare=True)
R250_MAIL = Reply(250, "2.1.0", "Ok")
R250_RCPT = Reply(250, "2.1.5", "Ok")
R250_QUEUED = Reply(250, "2.0.0", "Ok: queued")


@dataclass(frozen=True)
class ProviderLimits:
    rate_per_min: float  # token refill, messages per minute per source IP
    burst: int  # bucket capacity: messages a rested source may send at once
    connections: int  # concurrent connections per source IP
    per_connection: int  # messages (MAIL commands) per connection
    defer_at: DeferAt = "rcpt"  # where a message takes its token (and is deferred without one)
    penalty_deferrals: int = 8  # deferred attempts within penalty_window_s ...
    penalty_window_s: float = 60.0  # ... beyond this -> block
    block_s: float = 300.0

    def __post_init__(self) -> None:
        if self.rate_per_min <= 0 or self.burst < 1 or self.connections < 1:
            raise ValueError(f"limits out of range: {self}")
        if self.per_connection < 1 or self.penalty_deferrals < 0 or self.block_s < 0:
            raise ValueError(f"limits out of range: {self}")

    @property
    def rate_per_s(self) -> float:
        return self.rate_per_min / 60.0


@dataclass(frozen=True)
class ProviderTexts:
    """What a provider says when a source goes over a limit ("{ip}": the source's address)."""

    rate: Reply  # no token: at RCPT or at the end of DATA
    connections: Reply  # instead of the greeting, over the connection cap
    per_connection: Reply  # at MAIL, over the messages-per-connection cap
    block: Reply  # at connect and at MAIL while the source is blocked
    rate_class: ReplyClass = ReplyClass.RATE  # some providers word rate deferrals as reputation

    def by_class(self) -> dict[ReplyClass, Reply]:
        """Each reply with the class it must be classified as."""
        return {
            self.rate_class: self.rate,
            ReplyClass.CONNECTIONS: self.connections,
            ReplyClass.PER_CONNECTION: self.per_connection,
            ReplyClass.BLOCK: self.block,
        }


def _r(line: str) -> Reply:
    return Reply.parse(line)


# Texts shared where a provider has no canonical text of its own for a class: worded generically
# so that the rules for every destination classify them.
_TOO_MANY_CONNECTIONS = _r(
    "421 4.7.0 Too many concurrent SMTP connections from this IP address; please try again later."
)
_TOO_MANY_MESSAGES = _r("421 4.7.0 too many messages, reconnect")
_BLOCKED = _r(
    "421 4.7.0 Your IP {ip} is temporarily blocked after repeated deferrals; try again later"
)

_GOOGLE_RATE = _r("421 4.7.0 Try again later, closing connection.")
_GOOGLE_UNSOLICITED = _r(
    "421 4.7.28 [{ip}] Our system has detected an unusual rate of unsolicited mail originating "
    "from your IP address. To protect our users from spam, mail sent from your IP address has "
    "been temporarily rate limited. Please visit "
    "https://support.google.com/mail/?p=UnsolicitedRateLimitError to review our Bulk Email "
    "Senders Guidelines."
)
_YAHOO_TSS04 = _r(
    "421 4.7.0 [TSS04] Messages from {ip} temporarily deferred due to unexpected volume or user "
    "complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes"
)
_YAHOO_MAX_PER_CONNECTION = _r(
    "421 Max message per connection reached, closing transmission channel"
)
_YAHOO_TSS09 = _r(
    "421 4.7.0 [TSS09] All messages from {ip} will be permanently deferred; Retrying will NOT "
    "succeed. See https://postmaster.yahooinc.com/error-codes"
)
_MICROSOFT_BUSY = _r("451 4.7.500 Server busy. Please try again later from [{ip}]. (AS761)")
_MICROSOFT_REPUTATION = _r(
    "451 4.7.650 The mail server [{ip}] has been temporarily rate limited due to IP reputation. "
    "For e-mail delivery information, see https://postmaster.live.com (S775)"
)
_MICROSOFT_CONNECTIONS = _r(
    "421 4.3.2 The maximum number of concurrent server connections has exceeded a limit, "
    "closing transmission channel"
)
_MICROSOFT_BLOCK_LIST = _r(
    "550 5.7.1 Unfortunately, messages from [{ip}] weren't sent. Please contact your Internet "
    "service provider since part of their network is on our block list (S3150)."
)

_REPUTATION = ReplyClass.REPUTATION
_GOOGLE = ProviderTexts(_GOOGLE_RATE, _TOO_MANY_CONNECTIONS, _TOO_MANY_MESSAGES, _BLOCKED)
_YAHOO = ProviderTexts(
    _YAHOO_TSS04, _TOO_MANY_CONNECTIONS, _YAHOO_MAX_PER_CONNECTION, _BLOCKED, _REPUTATION
)
_MICROSOFT = ProviderTexts(
    _MICROSOFT_BUSY, _MICROSOFT_CONNECTIONS, _TOO_MANY_MESSAGES, _MICROSOFT_BLOCK_LIST
)
_ISP = ProviderTexts(
    _r("450 4.2.1 rate limit exceeded, slow down"),
    _r("421 4.7.0 too many connections from your IP"),
    _TOO_MANY_MESSAGES,
    _BLOCKED,
)

# Per provider, its ways of answering; the first is the usual one. Yahoo's second blocks with
# a text that says it will never lift (the classifier marks it a bounce).
PROVIDERS: dict[str, tuple[ProviderTexts, ...]] = {
    "google": (_GOOGLE, replace(_GOOGLE, rate=_GOOGLE_UNSOLICITED, rate_class=_REPUTATION)),
    "yahoo": (_YAHOO, replace(_YAHOO, block=_YAHOO_TSS09)),
    "microsoft": (
        _MICROSOFT,
        replace(_MICROSOFT, rate=_MICROSOFT_REPUTATION, rate_class=_REPUTATION),
    ),
    "isp": (_ISP,),
}


@dataclass(frozen=True)
class SourceStats:
    """What one source IP did (or all of them, added up)."""

    accepted: int = 0  # messages accepted at the end of DATA
    deferred: int = 0  # messages deferred with the rate reply (no token)
    blocks: int = 0  # penalty blocks started
    max_concurrent: int = 0  # most connections open at once
    attempts: int = 0  # messages that asked for a token (accepted there or deferred)
    refused_connections: int = 0  # greetings refused over the connection cap
    per_connection: int = 0  # MAIL commands refused over the per-connection cap
    block_replies: int = 0  # connects and MAIL commands answered with the block reply

    def __add__(self, other: SourceStats) -> SourceStats:
        return SourceStats(
            **{
                f.name: (
                    max(getattr(self, f.name), getattr(other, f.name))
                    if f.name == "max_concurrent"
                    else getattr(self, f.name) + getattr(other, f.name)
                )
                for f in fields(self)
            }
        )


@dataclass
class _Source:
    tokens: float
    last: float
    deferrals: deque[float]
    open: int = 0
    blocked_until: float = -math.inf
    counts: dict[str, int] = field(default_factory=dict)

    def count(self, name: str, by: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + by


class ProviderModel:
    """One provider's limits, applied per source IP; every call takes `now` (seconds)."""

    def __init__(self, limits: ProviderLimits, texts: ProviderTexts) -> None:
        self.limits = limits
        self.texts = texts
        self._sources: dict[str, _Source] = {}

    # ----- the SMTP dialogue

    def connect(self, source: str, now: float) -> Reply:
        """220, the block reply or the connections reply; only a 220 opens a connection (and
        asks for a disconnect() later)."""
        src = self._source(source, now)
        if self.blocked(source, now):
            src.count("block_replies")
            return self.texts.block.for_source(source)
        if src.open >= self.limits.connections:
            src.count("refused_connections")
            return self.texts.connections.for_source(source)
        src.open += 1
        src.counts["max_concurrent"] = max(src.counts.get("max_concurrent", 0), src.open)
        return R220_READY

    def disconnect(self, source: str, now: float) -> None:
        src = self._source(source, now)
        src.open = max(0, src.open - 1)

    def mail(self, source: str, sent_on_connection: int, now: float) -> Reply:
        """250, the block reply, or the per-connection reply when the connection already had
        `sent_on_connection` >= per_connection MAIL commands accepted."""
        src = self._source(source, now)
        if self.blocked(source, now):
            src.count("block_replies")
            return self.texts.block.for_source(source)
        if sent_on_connection >= self.limits.per_connection:
            src.count("per_connection")
            return self.texts.per_connection.for_source(source)
        return R250_MAIL

    def rcpt(self, source: str, now: float) -> Reply:
        """250, or the rate reply when messages take their token at RCPT and none is left."""
        if self.limits.defer_at != "rcpt":
            self._source(source, now)
            return R250_RCPT
        return self._take(source, now, R250_RCPT)

    def data(self, source: str, now: float) -> Reply:
        """250 (the message is accepted), or the rate reply when messages take their token at
        the end of DATA and none is left."""
        if self.limits.defer_at == "data":
            reply = self._take(source, now, R250_QUEUED)
        else:
            reply = R250_QUEUED
        if reply.ok:
            self._source(source, now).count("accepted")
        return reply

    def block(self, source: str, now: float, seconds: float) -> None:
        """Block `source` for `seconds` from `now`, as if it had ignored deferrals (a test that
        needs a blocked address without provoking the penalty)."""
        src = self._source(source, now)
        src.blocked_until = now + seconds
        src.count("blocks")

    # ----- questions

    def blocked(self, source: str, now: float) -> bool:
        src = self._sources.get(source)
        return src is not None and now < src.blocked_until

    def blocked_until(self, source: str) -> float | None:
        src = self._sources.get(source)
        return None if src is None or src.blocked_until == -math.inf else src.blocked_until

    def tokens(self, source: str, now: float) -> float:
        """Tokens the source has now (a fresh source: a full bucket)."""
        return self._source(source, now).tokens

    def open_connections(self, source: str) -> int:
        src = self._sources.get(source)
        return 0 if src is None else src.open

    def sources(self) -> list[str]:
        return list(self._sources)

    def stats(self, source: str | None = None) -> SourceStats:
        """One source's counts; None: all sources added up (max_concurrent: the largest)."""
        if source is None:
            total = SourceStats()
            for name in self._sources:
                total = total + self.stats(name)
            return total
        src = self._sources.get(source)
        return SourceStats(**src.counts) if src is not None else SourceStats()

    def ideal_seconds(self, messages: int, sources: int = 1) -> float:
        """The shortest span from the first to the last accepted message for a sender that
        knows these limits: each source sends its burst at once, then one message per token.
        Sources multiply capacity (each has its own bucket); connections do not limit it."""
        if messages <= 0:
            return 0.0
        per_source = math.ceil(messages / max(1, sources))
        return max(0.0, (per_source - self.limits.burst) / self.limits.rate_per_s)

    # ----- inside

    def _source(self, source: str, now: float) -> _Source:
        src = self._sources.get(source)
        if src is None:
            window: deque[float] = deque(maxlen=self.limits.penalty_deferrals + 1)
            src = self._sources[source] = _Source(float(self.limits.burst), now, window)
        elif now > src.last:
            refill = (now - src.last) * self.limits.rate_per_s
            src.tokens = min(float(self.limits.burst), src.tokens + refill)
            src.last = now
        return src

    def _take(self, source: str, now: float, ok: Reply) -> Reply:
        src = self._source(source, now)
        src.count("attempts")
        if src.tokens >= 1.0:
            src.tokens -= 1.0
            return ok
        src.count("deferred")
        self._penalise(src, now)
        return self.texts.rate.for_source(source)

    def _penalise(self, src: _Source, now: float) -> None:
        window = src.deferrals
        window.append(now)
        while window and window[0] <= now - self.limits.penalty_window_s:
            window.popleft()
        if len(window) > self.limits.penalty_deferrals and now >= src.blocked_until:
            src.blocked_until = now + self.limits.block_s
            src.count("blocks")
            window.clear()


def random_limits(rng: random.Random) -> ProviderLimits:
    """Limits anywhere in the ranges providers use: 10 to 3,000 messages a minute (log-uniform,
    so slow and fast providers are drawn as often), a burst of 1 to 20 seconds of that rate
    (at least one message), 1 to 20 connections, 5 to 100 messages per connection, deferral at
    RCPT or at the end of DATA."""
    rate = round(10.0 * 300.0 ** rng.random(), 1)
    burst = max(1, round(rate / 60.0 * rng.uniform(1.0, 20.0)))
    return ProviderLimits(
        rate_per_min=rate,
        burst=burst,
        connections=rng.randint(1, 20),
        per_connection=rng.randint(5, 100),
        defer_at=rng.choice(("rcpt", "data")),
    )
