"""Resource caps of the ingest, as plain decisions over plain state (no sockets, no aiosmtpd):

- Connections: at most `per_ip` open from one client address (`per_trusted_ip` for trusted
  networks, 0: no cap) and `total` in all. Over a cap the client gets 421 and the connection
  closes before the greeting (Postfix's anvil: smtpd_client_connection_count_limit).
- Junk: NOOP, RSET, VRFY, EXPN and HELP count toward `junk_commands`, transactions aborted
  before DATA completes (RSET, EHLO or HELO after MAIL) toward `aborted_transactions`; past
  either limit, 421 4.7.0 and close. Both counts restart after a message is queued, as
  Postfix's smtpd_junk_command_limit does: an MTA that delivers may send RSET between messages.
- Bytes in flight: a DATA transfer reserves its declared SIZE (or the largest message size)
  from one budget before the 354, and gives it back once answered. Ingest memory is then
  bounded by the budget times the copies a message costs, not by connections times size.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass, field
from typing import Protocol

from mailsluice.ingest import replies
from mailsluice.metrics.ingest import Ingest as metrics

# Commands that move no mail: counted toward the junk limit.
JUNK_COMMANDS = frozenset({"NOOP", "RSET", "VRFY", "EXPN", "HELP"})


@dataclass(frozen=True)
class Caps:
    per_ip: int
    per_trusted_ip: int  # 0: no per-address cap for trusted networks
    total: int
    junk_commands: int
    aborted_transactions: int


# --- connections --------------------------------------------------------------------------------


@dataclass
class ConnectionCounts:
    """Connections open now, by client address and in all (admitted ones only: a refused
    connection never holds a place)."""

    by_ip: collections.Counter[str] = field(default_factory=collections.Counter)
    total: int = 0

    def admit(self, ip: str, *, trusted: bool, caps: Caps) -> tuple[str, str] | None:
        """Take a place for a new connection, or say why not: (reply, reason label)."""
        if self.total >= caps.total:
            return replies.S421_TOO_MANY_CONNECTIONS, "global"
        limit = caps.per_trusted_ip if trusted else caps.per_ip
        if limit and self.by_ip[ip] >= limit:
            return replies.S421_TOO_MANY_FROM_IP.format(ip=ip), "per_ip"
        self.by_ip[ip] += 1
        self.total += 1
        return None

    def release(self, ip: str) -> None:
        self.total -= 1
        self.by_ip[ip] -= 1
        if self.by_ip[ip] <= 0:
            del self.by_ip[ip]


# --- junk ---------------------------------------------------------------------------------------


@dataclass
class JunkCount:
    """Per connection, since the last message queued."""

    commands: int = 0
    aborted: int = 0


def junk_command(count: JunkCount, caps: Caps) -> tuple[str, str] | None:
    """Before a junk command runs: (421 reply, violation kind) once over the limit."""
    count.commands += 1
    if count.commands > caps.junk_commands:
        return replies.S421_TOO_MANY_JUNK, "too_many_junk_commands"
    return None


def new_transaction(count: JunkCount, caps: Caps) -> tuple[str, str] | None:
    """Before MAIL starts a transaction: (421 reply, violation kind) once too many aborted."""
    if count.aborted >= caps.aborted_transactions:
        return replies.S421_TOO_MANY_ABORTED, "too_many_aborted"
    return None


def queued(count: JunkCount) -> None:
    count.commands = count.aborted = 0


# --- bytes in flight ----------------------------------------------------------------------------


# A transfer reserves its bytes in steps of this as they arrive past what it reserved before
# its 354 (its declared SIZE, else one step). Reserving max_message_size up front for a client
# that declares no SIZE let only 4 such transfers run at once with the default budget.
DATA_STEP = 256 * 1024


def reservation(declared: int | None, max_size: int) -> int:
    """What a DATA transfer reserves before its 354: its declared SIZE, else one step."""
    return min(declared or DATA_STEP, max_size)


def declared_size(mail_options: list[str]) -> int | None:
    """SIZE=n of the MAIL command (aiosmtpd has checked the syntax), None if not given."""
    for option in mail_options:
        name, _, value = option.partition("=")
        if name.upper() == "SIZE" and value.isdigit():
            return int(value)
    return None


class ByteBudget:
    """Bytes of message data the ingest holds at once. Waiters are served in order, so a large
    transfer is not starved by a stream of small ones."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    def queue_fits(self, amount: int) -> bool:
        """Whether `amount` would get its turn within one budget's worth of bytes: what is
        already waiting plus it must not exceed the capacity."""
        return sum(n for n, _ in self._waiters) + amount <= self.capacity

    def fits(self, amount: int) -> bool:
        return not self._waiters and self.used + amount <= self.capacity

    def try_take(self, amount: int) -> bool:
        if not self.fits(amount):
            return False
        self.used += amount
        return True

    async def take(self, amount: int, timeout_s: float) -> bool:
        """Reserve `amount`, waiting at most `timeout_s`; False when it did not fit in time."""
        if self.try_take(amount):
            return True
        waiter = asyncio.get_running_loop().create_future()
        entry = (amount, waiter)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout_s)
            return True
        except TimeoutError:
            if waiter.done():  # granted just as the wait ran out: keep it
                return True
            self._waiters.remove(entry)
            self._wake()
            return False
        except asyncio.CancelledError:
            if waiter.done():
                self.give(amount)
            else:
                self._waiters.remove(entry)
                self._wake()
            raise

    def give(self, amount: int) -> None:
        self.used -= amount
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.used + self._waiters[0][0] <= self.capacity:
            amount, waiter = self._waiters.popleft()
            self.used += amount
            waiter.set_result(None)


class Held:
    """What one connection holds of the registry's DATA budget."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.bytes = 0

    async def take(self, amount: int, stage: str) -> bool:
        """`amount` more, waited for in order; False (counted by `stage`) if not in time."""
        budget = self.registry.budget
        if not await budget.take(amount, self.registry.budget_wait_s):
            metrics.DATA_BUDGET_REFUSED.labels(stage).inc()
            return False
        self.bytes += amount
        metrics.DATA_BYTES_RESERVED.set(budget.used)
        return True

    def release(self) -> None:
        if self.bytes:
            self.registry.budget.give(self.bytes)
            self.bytes = 0
            metrics.DATA_BYTES_RESERVED.set(self.registry.budget.used)


# --- the live connections -----------------------------------------------------------------------


class Connection(Protocol):
    def in_transaction(self) -> bool: ...

    def close_with(self, reply: str) -> None: ...


class Registry:
    """Live connections, for draining at shutdown; what they hold of the caps."""

    def __init__(self, caps: Caps | None = None, budget: ByteBudget | None = None) -> None:
        self.connections: set[Connection] = set()
        self.draining = False
        self.caps = caps or Caps(
            per_ip=0, per_trusted_ip=0, total=1 << 30, junk_commands=1 << 30,
            aborted_transactions=1 << 30,
        )  # fmt: skip
        self.counts = ConnectionCounts()
        self.budget = budget or ByteBudget(1 << 62)
        self.budget_wait_s = 60.0

    def busy(self) -> int:
        return sum(1 for c in self.connections if c.in_transaction())
