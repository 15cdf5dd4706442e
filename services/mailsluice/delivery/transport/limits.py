"""What the SMTP transport may do per destination: the shaping policy's connection-level limits.

The scheduler already holds each routing key to its message rate and concurrent connections;
the transport applies what only it can see, per envelope routing key:

- messages per connection: a connection that carried that many messages is closed (QUIT);
- recipients per transaction: more recipients are sent as several transactions;
- TLS: "required" never falls back to plaintext (a server without STARTTLS gives 451 4.7.4),
  "disabled" never starts it unless the setting requires it (`effective_tls`); the same on
  static routes and through the smarthost as on MX routes;
- connections per minute: a new connection needs a token of the GCRA (limiter.Gcra) of the
  key and source address; with none left the send reuses an idle connection or waits briefly,
  then defers (replies.S451_CONNECTION_RATE, which the worker queues again rather than counting
  an attempt).

Every one of them follows the routing key, whichever way the mail leaves: a static route or
the smarthost carries mail for the key's recipients, and the limits are theirs.

The transport gets them through `LimitsLookup`, a function of the routing key; without one
OutboundSettings alone apply. `shaper_limits` adapts the shaping engine's
`PolicyShaper.shaping`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from mailsluice.contracts.routing import split_key
from mailsluice.delivery.shaping.limiter import Gcra, Limits, Rate
from mailsluice.delivery.transport.settings import OutboundSettings, TlsPolicy
from mailsluice.metrics.labels import provider_label
from mailsluice.policy.shaping import Shaping, TlsMode

# How long one send waits for the destination's connection rate before it defers, and how
# often it looks for an idle connection meanwhile (a concurrent send may release one).
CONNECT_WAIT_MAX_S = 5.0
CONNECT_POLL_S = 0.05
# Connection-rate limiters kept; idle ones (full credit, nothing to remember) go first.
MAX_GATES = 10_000


@dataclass(frozen=True)
class TransportLimits:
    """Connection-level limits of one routing key; None: as OutboundSettings says."""

    provider: str | None = None
    messages_per_connection: int | None = None
    recipients_per_transaction: int | None = None
    tls: TlsMode | None = None
    connection_rate: Rate | None = None


LimitsLookup = Callable[[str], TransportLimits]
MxObserver = Callable[[str, tuple[str, ...]], None]
# Messages a connection from a source address may carry to a routing key, as learned.
PerConnection = Callable[[str, str], int]


class ShapingSource(Protocol):
    """What the transport needs of the shaping engine (engine.PolicyShaper)."""

    def shaping(self, key: str) -> Shaping: ...

    def learn_mx(self, key: str, mx_hosts: Iterable[str]) -> None: ...


def limits_from_shaping(key: str, shaping: Shaping) -> TransportLimits:
    """A resolved policy rule as transport limits; a shard key ("google#3") gets its share of
    the connection rate, as the shaper's lanes divide the other limits."""
    rate = shaping.connection_rate
    conn_rate = None if rate is None else Rate(rate.count, rate.period, shaping.burst_of(rate))
    if conn_rate is not None and split_key(key)[1] is not None:
        conn_rate = Limits(1, (), conn_rate).divided(shaping.shards).connection_rate
    return TransportLimits(
        provider=shaping.provider,
        messages_per_connection=shaping.max_deliveries_per_connection,
        recipients_per_transaction=shaping.max_recipients_per_transaction,
        tls=shaping.tls,
        connection_rate=conn_rate,
    )


def shaper_limits(shaper: ShapingSource) -> LimitsLookup:
    """The transport's limits lookup backed by the shaping engine."""

    def lookup(key: str) -> TransportLimits:
        return limits_from_shaping(key, shaper.shaping(key))

    return lookup


def effective_tls(setting: TlsPolicy, policy: TlsMode | None) -> TlsPolicy:
    """The STARTTLS policy of one send: the stricter of the setting and the destination's rule.

    "required" on either side holds, on every route. A provider requiring TLS (gmail) requires
    it of the whole path its mail takes: a static route or smarthost that carries the mail in
    plaintext leaks what the provider's rule exists to protect, and a relay that cannot do TLS
    is a configuration error better seen as a 451 4.7.4 than as silently plaintext mail. Below
    that, the destination's "disabled" (a server whose STARTTLS is broken) turns off an
    opportunistic attempt, and its "opportunistic" (the default rule) leaves the setting as it
    is, so MAILSLUICE_OUTBOUND_TLS_POLICY=none still means none for ordinary destinations."""
    if setting == "required" or policy == "required":
        return "required"
    return "none" if policy == "disabled" else setting


@dataclass
class Destination:
    """One send's destination as the connection pool sees it."""

    key: str
    pool: str
    provider: str  # metric label: a provider name or "other", never a domain
    source: str  # the local address connections are bound to ("": any)
    tls_policy: TlsPolicy
    max_messages: int
    max_recipients: int  # per transaction; 0: no limit
    gate: Gcra | None = None
    max_wait_s: float = CONNECT_WAIT_MAX_S

    def connect_wait(self, now: float) -> float:
        """Seconds until a new connection may be opened (0.0: now)."""
        return 0.0 if self.gate is None else self.gate.wait_time(now)

    def try_connect(self, now: float) -> bool:
        """Take a connection token; False when the rate allows none now."""
        return self.gate is None or self.gate.try_acquire(now)

    def accepts(self, tls: bool) -> bool:
        """Whether an already open connection (encrypted or not) may carry this send."""
        return tls or self.tls_policy != "required"


class ConnectGates:
    """The connection-rate GCRA of each routing key and source address, kept across sends
    (bounded): a provider counts connections per source IP, so each address has its own."""

    def __init__(self, max_keys: int = MAX_GATES) -> None:
        self._max = max_keys
        self._gates: dict[tuple[str, str], Gcra] = {}

    def get(self, key: str, rate: Rate | None, now: float, source: str = "") -> Gcra | None:
        if rate is None:
            self._gates.pop((source, key), None)
            return None
        gate = self._gates.get((source, key))
        if gate is None:
            if len(self._gates) >= self._max:
                self._forget_idle(now)
            gate = self._gates[(source, key)] = Gcra(rate)
        elif gate.rate != rate:
            gate.configure(rate)  # keeps its state: a policy change grants no burst
        return gate

    def _forget_idle(self, now: float) -> None:
        for key in [k for k, g in self._gates.items() if g.idle(now)]:
            del self._gates[key]
        while len(self._gates) >= self._max:  # all busy: drop the oldest
            del self._gates[next(iter(self._gates))]

    def __len__(self) -> int:
        return len(self._gates)


def destination(
    key: str,
    pool: str,
    limits: TransportLimits,
    settings: OutboundSettings,
    *,
    source: str,
    gate: Gcra | None,
    max_wait_s: float = CONNECT_WAIT_MAX_S,
) -> Destination:
    per_conn = settings.messages_per_connection
    if limits.messages_per_connection is not None:
        per_conn = min(per_conn, limits.messages_per_connection)
    return Destination(
        key=key,
        pool=pool,
        provider=provider_label(limits.provider or key),
        source=source,
        tls_policy=effective_tls(settings.tls_policy, limits.tls),
        max_messages=per_conn,
        max_recipients=limits.recipients_per_transaction or 0,
        gate=gate,
        max_wait_s=max_wait_s,
    )


def batches(rcpts: list[str], size: int) -> list[list[str]]:
    """Recipients in transactions of at most `size` (0: one transaction)."""
    if size <= 0 or len(rcpts) <= size:
        return [rcpts]
    return [rcpts[i : i + size] for i in range(0, len(rcpts), size)]
