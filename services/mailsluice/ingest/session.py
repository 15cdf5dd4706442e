"""The SMTP protocol edge: aiosmtpd's SMTP with the policy of protocol.py applied, and nothing
else. Every override below asks protocol.py, counts what it says, then hands over to aiosmtpd.

Most of it uses aiosmtpd's documented extension points: `_create_envelope()`, `push()`,
`challenge_auth()` and the `smtp_<COMMAND>()` methods, the `transport`, `session`, `envelope`
and `loop` attributes, and the asyncio protocol's own `connection_made()` /
`connection_lost()`. Where aiosmtpd offers no documented hook, PRIVATE_API names what is used
instead; tests/ingest/test_aiosmtpd_contract.py fails when an aiosmtpd release changes any of it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from typing import Any, AnyStr, cast

import aiosmtpd.smtp
from aiosmtpd.smtp import MISSING, SMTP, Envelope

from mailsluice.ingest import caps, replies, transfer
from mailsluice.ingest.addresses import simple_path
from mailsluice.ingest.caps import JunkCount, Registry
from mailsluice.ingest.plan import Transaction
from mailsluice.ingest.protocol import (
    ConnState,
    Refusal,
    SessionLimits,
    after_reply,
    check_helo,
    check_mail,
    check_rcpt,
    check_starttls,
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
    # input not yet read while a reply is due reveals an early talker or pipelining. During
    # DATA its line limit `_limit` is raised to read the body in blocks (transfer.py).
    "_reader": "asyncio.StreamReader with a `_buffer` of unread bytes and an int `_limit`",
    # A dict shared by the class that every EHLO grows: made per connection, reset per EHLO.
    "command_size_limits": "defaultdict of command -> line limit, default command_size_limit",
    # A module constant `_handle_client` reads at each connection start as its budget of unknown
    # commands (then 502 and close, whatever our limit): raised so max_errors alone applies.
    "BOGUS_LIMIT": "int in aiosmtpd.smtp, read by _handle_client when a connection starts",
    # Parses the path of MAIL and RCPT (defining a typing.Protocol class on every call): the
    # everyday `<local@domain>` form is read without it (addresses.simple_path).
    "_getaddr": "method (self, arg) -> (address | None, rest | None)",
}

aiosmtpd.smtp.BOGUS_LIMIT = 1 << 30


class IngestEnvelope(Envelope):
    def __init__(self) -> None:
        super().__init__()
        self.txn: Transaction | None = None


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
        self.held = caps.Held(registry)  # what this connection holds of the DATA budget
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
            self.held.release()
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
        # Duck-typed: uvloop's transports are no asyncio.WriteTransport subclasses.
        transport = cast("asyncio.WriteTransport | None", self.transport)
        if transport is None or transport.is_closing():
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
        text = replies.printable(replies.rewrite(text))
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
        assert self.session is not None
        pipelining = bool(self.session.extended_smtp)  # EHLO advertises PIPELINING, HELO not
        refusal = out_of_sync(command, self._pending_input(), pipelining=pipelining)
        if refusal is None:
            return True
        log.info("protocol violation (%s) from %s", refusal.violation, self.conn.peer_ip)
        await self._refuse(refusal)
        self.conn.closing = True
        if self.transport is not None:
            self.transport.close()
        return False

    async def _in_sync_and_allowed(self, command: str, refusal: Refusal | None) -> bool:
        if not await self._in_sync(command):
            return False
        if refusal is not None:
            await self._refuse(refusal)
            return False
        return True

    # --- commands -----------------------------------------------------------------------------

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        simple = simple_path(arg)
        if simple is None:
            return super()._getaddr(arg)
        local = simple[0].rpartition("@")[0]
        if self.local_part_limit and len(local) > self.local_part_limit:
            return None, None
        return simple

    async def smtp_EHLO(self, hostname: str) -> None:
        if await self._in_sync_and_allowed("EHLO", check_helo("EHLO", hostname)):
            self.command_size_limits.clear()
            await super().smtp_EHLO(hostname)

    async def smtp_HELO(self, hostname: str) -> None:
        if await self._in_sync_and_allowed("HELO", check_helo("HELO", hostname)):
            await super().smtp_HELO(hostname)

    async def smtp_STARTTLS(self, arg: str) -> None:
        assert self.session is not None
        if await self._in_sync_and_allowed(
            "STARTTLS", check_starttls(self.session.ssl is not None)
        ):
            await super().smtp_STARTTLS(arg)

    async def smtp_AUTH(self, arg: str) -> None:
        if await self._in_sync("AUTH"):
            await super().smtp_AUTH(arg)

    async def challenge_auth(
        self, challenge: str | bytes, encode_to_b64: bool = True, log_client_response: bool = False
    ) -> Any:
        """A SASL response is part of AUTH: nothing may follow it before the next reply."""
        response = await super().challenge_auth(challenge, encode_to_b64, log_client_response)
        if response is not MISSING and not await self._in_sync("AUTH"):
            return MISSING  # the authentication fails; the connection is closing
        return response

    async def smtp_DATA(self, arg: str) -> None:
        if await self._in_sync("DATA"):
            if self._wants_data(arg) and not await self._reserve_data():
                return
            self._in_data = True
            reader = self._reader  # metered for the transfer: it reserves as the bytes arrive
            limit = self.data_size_limit or 0
            metered = transfer.MeteredReader(reader, self.held.bytes, limit, self._more_data)
            self._reader = cast("asyncio.StreamReader", metered)
            try:
                await super().smtp_DATA(arg)
            finally:
                self._reader = reader
                self._in_data = False
                self.held.release()
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
        if await self.held.take(caps.reservation(declared, self.data_size_limit or 0), "data"):
            return True
        await self.push(replies.S452_INSUFFICIENT_STORAGE)
        return False

    async def _more_data(self, amount: int) -> bool:
        """Another step of the budget during a transfer; else 421 4.3.1 and close."""
        if await self.held.take(amount, "transfer"):
            return True
        self.close_with(replies.S421_INSUFFICIENT_STORAGE)
        return False

    def _mail_budget(self, arg: str | None) -> tuple[str, str] | None:
        """MAIL with SIZE=n (RFC 1870 §6.1): 452 4.3.1 when n could not be had even after
        everything already waiting for the budget."""
        declared = caps.declared_size((arg or "").upper().split()[1:])
        if declared is None or self.registry.budget.queue_fits(declared):
            return None
        metrics.DATA_BUDGET_REFUSED.labels("mail").inc()
        return replies.S452_INSUFFICIENT_STORAGE, ""

    # --- commands that move no mail (caps.JUNK_COMMANDS) -------------------------------------
    # Without PIPELINING each waits for its reply too (QUIT aside: nothing follows it).

    async def _junk(self) -> bool:
        """Count a junk command; True (after 421 and close) once over the limit."""
        over = caps.junk_command(self.junk, self.registry.caps)
        if over is None:
            return False
        metrics.PROTOCOL_VIOLATIONS.labels(over[1]).inc()
        await self.push(over[0])
        return True

    async def smtp_NOOP(self, arg: str) -> None:
        if await self._in_sync("NOOP") and not await self._junk():
            await super().smtp_NOOP(arg)

    async def smtp_RSET(self, arg: str) -> None:
        if await self._in_sync("RSET") and not await self._junk():
            await super().smtp_RSET(arg)

    async def smtp_VRFY(self, arg: str) -> None:
        if await self._in_sync("VRFY") and not await self._junk():
            await super().smtp_VRFY(arg)

    async def smtp_EXPN(self, arg: str) -> None:
        if await self._in_sync("EXPN") and not await self._junk():
            await super().smtp_EXPN(arg)

    async def smtp_HELP(self, arg: str) -> None:
        if await self._in_sync("HELP") and not await self._junk():
            await super().smtp_HELP(arg)

    async def smtp_MAIL(self, arg: str | None) -> None:
        assert self.session is not None
        if not await self._in_sync("MAIL"):
            return
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
        if not await self._in_sync("RCPT"):
            return
        if self.session.host_name and self.in_transaction():
            refusal = check_rcpt(arg, self.limits, relay_allowed=self.relay_allowed())
            if refusal is not None:
                await self._refuse(refusal)
                return
        await super().smtp_RCPT(arg)


# aiosmtpd's HELP lists a command by the @syntax attributes of its method: keep them on ours.
for _name in dir(IngestSMTP):
    _ours, _theirs = getattr(IngestSMTP, _name), getattr(SMTP, _name, None)
    if _name.startswith("smtp_") and _theirs is not None and _ours is not _theirs:
        for _attr in ("__smtp_syntax__", "__smtp_syntax_extended__", "__smtp_syntax_when__"):
            if hasattr(_theirs, _attr):
                setattr(_ours, _attr, getattr(_theirs, _attr))
