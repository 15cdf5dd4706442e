"""The SMTP protocol edge: aiosmtpd's SMTP with the policy of protocol.py applied, and nothing
else. Every override below asks protocol.py, counts what it says, then hands over to aiosmtpd.

Most of it uses aiosmtpd's documented extension points: `_create_envelope()`, `push()` and the
`smtp_<COMMAND>()` methods, the `transport`, `session`, `envelope` and `loop` attributes, and
the asyncio protocol's own `connection_made()` / `connection_lost()`. Where aiosmtpd offers no
documented hook, PRIVATE_API names what is used instead; tests/ingest/test_aiosmtpd_contract.py
fails when an aiosmtpd release changes any of it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from typing import Any, AnyStr

from aiosmtpd.smtp import SMTP, Envelope, syntax

from mailsluice.ingest import caps, replies
from mailsluice.ingest.caps import ByteBudget, Caps, ConnectionCounts, JunkCount
from mailsluice.ingest.plan import Transaction
from mailsluice.ingest.protocol import (
    ConnState,
    Refusal,
    SessionLimits,
    after_reply,
    check_mail,
    check_rcpt,
    early_talker,
    out_of_sync,
    trusted_network_of,
)
from mailsluice.metrics.ingest import Ingest as metrics

log = logging.getLogger(__name__)

# aiosmtpd's undocumented parts this module relies on, and why.
PRIVATE_API = {
    # The per-connection command loop, which sends the 220 greeting first: the greeting pause
    # runs before it (aiosmtpd has no hook before the greeting).
    "_handle_client": "coroutine method (self), started once per connection",
    # Called when aiosmtpd's idle timer (the `timeout` argument) fires: 421 before the close.
    "_timeout_cb": "method (self)",
    # The connection's asyncio.StreamReader (asyncio keeps unread bytes in its `_buffer`):
    # input not yet read while a reply is due reveals an early talker or pipelining.
    "_reader": "asyncio.StreamReader with a `_buffer` of unread bytes",
    # A dict shared by the class that every EHLO grows: made per connection, reset per EHLO.
    "command_size_limits": "defaultdict of command -> line limit, default command_size_limit",
}


class IngestEnvelope(Envelope):
    def __init__(self) -> None:
        super().__init__()
        self.txn: Transaction | None = None


class Registry:
    """Live connections, for draining at shutdown; what they hold of the caps."""

    def __init__(self, caps: Caps | None = None, budget: ByteBudget | None = None) -> None:
        self.connections: set[IngestSMTP] = set()
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


class IngestSMTP(SMTP):
    def __init__(
        self,
        handler: Any,
        *,
        limits: SessionLimits,
        registry: Registry,
        on_rejected: Callable[[IngestSMTP, str, str, str], None],
        **kwargs: Any,
    ) -> None:
        self.command_size_limits = collections.defaultdict(lambda: SMTP.command_size_limit)
        super().__init__(handler, **kwargs)
        self.limits = limits
        self.registry = registry
        self.conn = ConnState()
        self._on_rejected = on_rejected
        self._session_timer: asyncio.TimerHandle | None = None
        self._registered = False
        self._refused: tuple[str, str] | None = None  # over a connection cap: (reply, reason)
        self._admitted = False
        self.junk = JunkCount()
        self._in_data = False
        self._reserved = 0  # bytes of the DATA budget this connection holds
        self._last_reply = ""

    # --- state --------------------------------------------------------------------------------

    def _create_envelope(self) -> Envelope:
        # aiosmtpd makes a new envelope whenever a transaction ends: one that had MAIL but did
        # not get through DATA was aborted (RSET, EHLO, HELO).
        if getattr(self, "_in_data", True) is False and self.in_transaction():
            self.junk.aborted += 1
        return IngestEnvelope()

    # A plain method, not a property: aiosmtpd's __init__ inspects every attribute.
    def in_transaction(self) -> bool:
        return self.envelope is not None and bool(self.envelope.mail_from)

    def relay_allowed(self) -> bool:
        assert self.session is not None
        return bool(self.conn.trusted_network) or bool(self.session.authenticated)

    def _pending_input(self) -> bool:
        return bool(getattr(self._reader, "_buffer", b""))

    # --- connection life cycle ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self._registered:
            return  # the same connection again, over TLS after STARTTLS
        self._registered = True
        peer = transport.get_extra_info("peername")
        self.conn.peer_ip = str(peer[0]) if peer else ""
        self.conn.trusted_network = trusted_network_of(
            self.conn.peer_ip, self.limits.trusted_networks
        )
        registry = self.registry
        self._refused = registry.counts.admit(
            self.conn.peer_ip, trusted=bool(self.conn.trusted_network), caps=registry.caps
        )
        if self._refused is not None:
            metrics.CONNECTIONS_REFUSED.labels(self._refused[1]).inc()
            return
        self._admitted = True
        self.registry.connections.add(self)
        metrics.CONNECTIONS.inc()
        metrics.CONNECTIONS_OPEN.inc()
        self._session_timer = self.loop.call_later(
            self.limits.session_timeout_s, self.close_with, replies.S421_SESSION_TIMEOUT
        )

    def connection_lost(self, error: Exception | None) -> None:
        if self._registered:
            self._registered = False
            self._release_data()
            if self._admitted:
                self._admitted = False
                self.registry.counts.release(self.conn.peer_ip)
                self.registry.connections.discard(self)
                metrics.CONNECTIONS_OPEN.dec()
            if self._session_timer is not None:
                self._session_timer.cancel()
        super().connection_lost(error)

    def _timeout_cb(self) -> None:
        self.close_with(replies.S421_IDLE_TIMEOUT)

    def close_with(self, reply: str) -> None:
        """Send a final reply and close (timeouts, shutdown: outside the command loop)."""
        transport = self.transport
        if not isinstance(transport, asyncio.WriteTransport) or transport.is_closing():
            return
        self.conn.closing = True
        transport.write(reply.encode() + b"\r\n")
        transport.close()

    async def _handle_client(self) -> None:
        if self._refused is not None:
            log.info("connection from %s refused: %s", self.conn.peer_ip, self._refused[1])
            self.close_with(self._refused[0])
            return
        if self.limits.greet_pause_s > 0:
            await asyncio.sleep(self.limits.greet_pause_s)
            refusal = early_talker(self._pending_input())
            if refusal is not None:
                metrics.PROTOCOL_VIOLATIONS.labels(refusal.violation).inc()
                self.close_with(refusal.reply)
                return
        await super()._handle_client()

    # --- replies ------------------------------------------------------------------------------

    async def push(self, status: AnyStr) -> None:
        text = status.decode("ascii", "replace") if isinstance(status, bytes) else status
        text = replies.rewrite(text)
        self._last_reply = text
        if self.conn.closing:
            return
        await super().push(text)
        after = after_reply(text, self.conn, self.limits)
        if after.violation:
            metrics.PROTOCOL_VIOLATIONS.labels(after.violation).inc()
        if after.transaction:
            metrics.TRANSACTIONS.labels(after.transaction).inc()
        if after.close:
            self.conn.closing = True
            if self.transport is not None:
                self.transport.close()
        if after.then:
            await self.push(after.then)

    async def _refuse(self, refusal: Refusal) -> None:
        if refusal.violation:
            metrics.PROTOCOL_VIOLATIONS.labels(refusal.violation).inc()
        if refusal.reason:
            self._on_rejected(self, refusal.recipient, refusal.reply, refusal.reason)
        await self.push(refusal.reply)

    async def _in_sync(self, command: str) -> bool:
        refusal = out_of_sync(command, self._pending_input())
        if refusal is None:
            return True
        log.info("protocol violation (%s) from %s", refusal.violation, self.conn.peer_ip)
        await self._refuse(refusal)
        if self.transport is not None:
            self.transport.close()
        return False

    # --- commands -----------------------------------------------------------------------------

    async def smtp_EHLO(self, hostname: str) -> None:
        if await self._in_sync("EHLO"):
            self.command_size_limits.clear()
            await super().smtp_EHLO(hostname)

    async def smtp_HELO(self, hostname: str) -> None:
        if await self._in_sync("HELO"):
            await super().smtp_HELO(hostname)

    async def smtp_STARTTLS(self, arg: str) -> None:
        if await self._in_sync("STARTTLS"):
            await super().smtp_STARTTLS(arg)

    async def smtp_DATA(self, arg: str) -> None:
        if await self._in_sync("DATA"):
            if self._wants_data(arg) and not await self._reserve_data():
                return
            self._in_data = True
            try:
                await super().smtp_DATA(arg)
            finally:
                self._in_data = False
                self._release_data()
            if self._last_reply.startswith("250"):
                caps.queued(self.junk)

    def _wants_data(self, arg: str | None) -> bool:
        """DATA that aiosmtpd will answer with 354 (the rest it refuses itself)."""
        envelope = self.envelope
        return arg is None and envelope is not None and bool(envelope.rcpt_tos)

    async def _reserve_data(self) -> bool:
        """Before the 354: a share of the DATA budget, waited for in order; 452 4.3.1 if it
        does not come in time."""
        assert self.envelope is not None
        declared = caps.declared_size(self.envelope.mail_options)
        amount = caps.reservation(declared, self.data_size_limit or 0)
        budget = self.registry.budget
        if not await budget.take(amount, self.registry.budget_wait_s):
            metrics.DATA_BUDGET_REFUSED.labels("data").inc()
            await self.push(replies.S452_INSUFFICIENT_STORAGE)
            return False
        self._reserved = amount
        metrics.DATA_BYTES_RESERVED.set(budget.used)
        return True

    def _mail_budget(self, arg: str | None) -> tuple[str, str] | None:
        """MAIL with SIZE=n (RFC 1870 §6.1): 452 4.3.1 when n could not be had even after
        everything already waiting for the budget."""
        declared = caps.declared_size((arg or "").upper().split()[1:])
        if declared is None or self.registry.budget.queue_fits(declared):
            return None
        metrics.DATA_BUDGET_REFUSED.labels("mail").inc()
        return replies.S452_INSUFFICIENT_STORAGE, ""

    def _release_data(self) -> None:
        if self._reserved:
            self.registry.budget.give(self._reserved)
            self._reserved = 0
            metrics.DATA_BYTES_RESERVED.set(self.registry.budget.used)

    # --- commands that move no mail (caps.JUNK_COMMANDS) -------------------------------------

    async def _junk(self) -> bool:
        """Count a junk command; True (after 421 and close) once over the limit."""
        over = caps.junk_command(self.junk, self.registry.caps)
        if over is None:
            return False
        metrics.PROTOCOL_VIOLATIONS.labels(over[1]).inc()
        await self.push(over[0])
        return True

    @syntax("NOOP [ignored]")
    async def smtp_NOOP(self, arg: str) -> None:
        if not await self._junk():
            await super().smtp_NOOP(arg)

    @syntax("RSET")
    async def smtp_RSET(self, arg: str) -> None:
        if not await self._junk():
            await super().smtp_RSET(arg)

    @syntax("VRFY <address>")
    async def smtp_VRFY(self, arg: str) -> None:
        if not await self._junk():
            await super().smtp_VRFY(arg)

    @syntax("EXPN <address>")
    async def smtp_EXPN(self, arg: str) -> None:
        if not await self._junk():
            await super().smtp_EXPN(arg)

    @syntax("HELP [command]")
    async def smtp_HELP(self, arg: str) -> None:
        if not await self._junk():
            await super().smtp_HELP(arg)

    async def smtp_MAIL(self, arg: str | None) -> None:
        assert self.session is not None
        if self.session.host_name and not self.in_transaction():
            over = caps.new_transaction(self.junk, self.registry.caps) or self._mail_budget(arg)
            if over is not None:
                if over[1]:
                    metrics.PROTOCOL_VIOLATIONS.labels(over[1]).inc()
                await self.push(over[0])
                return
            refusal = check_mail(
                arg,
                self.conn,
                self.limits,
                relay_allowed=self.relay_allowed(),
                draining=self.registry.draining,
            )
            if refusal is not None:
                await self._refuse(refusal)
                return
        await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str | None) -> None:
        assert self.session is not None
        if self.session.host_name and self.in_transaction():
            refusal = check_rcpt(arg, self.limits, relay_allowed=self.relay_allowed())
            if refusal is not None:
                await self._refuse(refusal)
                return
        await super().smtp_RCPT(arg)
