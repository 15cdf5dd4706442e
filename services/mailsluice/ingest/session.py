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

from aiosmtpd.smtp import SMTP, Envelope

from mailsluice.ingest import replies
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
    """Live connections, for draining at shutdown."""

    def __init__(self) -> None:
        self.connections: set[IngestSMTP] = set()
        self.draining = False

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

    # --- state --------------------------------------------------------------------------------

    def _create_envelope(self) -> Envelope:
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
        self.registry.connections.add(self)
        metrics.CONNECTIONS.inc()
        metrics.CONNECTIONS_OPEN.inc()
        self._session_timer = self.loop.call_later(
            self.limits.session_timeout_s, self.close_with, replies.S421_SESSION_TIMEOUT
        )

    def connection_lost(self, error: Exception | None) -> None:
        if self._registered:
            self._registered = False
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
            await super().smtp_DATA(arg)

    async def smtp_MAIL(self, arg: str | None) -> None:
        assert self.session is not None
        if self.session.host_name and not self.in_transaction():
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
