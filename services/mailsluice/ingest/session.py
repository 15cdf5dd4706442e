"""The SMTP protocol edge: aiosmtpd's SMTP with our limits and protocol policing.

What this adds to aiosmtpd (everything else is its own RFC 5321 state machine):
- replies rewritten to carry RFC 3463 enhanced codes (replies.BUILTIN_REWRITES);
- any 421 reply closes the connection; protocol errors are counted and past the limit the
  client gets 421 4.7.0 and is disconnected; max messages per connection;
- an idle timeout and a total session timeout, both announced with 421 4.4.2;
- a greeting pause: a client that talks before the 220 greeting is an early talker and gets
  554 5.5.0; commands after EHLO/HELO/DATA in the same packet (RFC 2920 §3.1 forbids it) get
  554 5.5.0 too, and the connection is closed (like Postfix's smtpd_forbid_unauth_pipelining);
- strict address parsing before aiosmtpd's lenient one (addresses.parse_path), and the relay
  check (trusted network or authenticated) before MAIL and RCPT. The one exception: RCPT to a
  feedback-loop address is local delivery, open to any client (so MAIL is too when such
  addresses are configured); every other recipient of a stranger still gets 530.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, AnyStr

from aiosmtpd.smtp import SMTP, Envelope

from mailsluice.ingest import replies
from mailsluice.ingest.addresses import AddressError, parse_path
from mailsluice.metrics.ingest import Ingest as metrics

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass
class Transaction:
    queue_id: str
    started: float  # monotonic
    received_at: float  # epoch
    routing: dict[str, str] = field(default_factory=dict)  # accepted recipient -> routing key
    feedback: list[str] = field(default_factory=list)  # accepted feedback-loop addresses


class IngestEnvelope(Envelope):
    def __init__(self) -> None:
        super().__init__()
        self.txn: Transaction | None = None


@dataclass(frozen=True)
class SessionLimits:
    max_messages: int
    max_errors: int
    session_timeout_s: float
    greet_pause_s: float
    trusted_networks: tuple[Network, ...]
    feedback_addresses: frozenset[str] = frozenset()  # lower-cased


@dataclass
class ConnState:
    trusted_network: str = ""  # the trusted network the peer is in, "" if none
    peer_ip: str = ""
    messages: int = 0
    errors: int = 0
    closing: bool = False


def trusted_network_of(ip: str, networks: tuple[Network, ...]) -> str:
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for network in networks:
        if address.version == network.version and address in network:
            return str(network)
    return ""


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
        # Per instance: aiosmtpd keeps this dict on the class and grows it on every EHLO.
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

    def is_feedback_path(self, path_arg: str | None) -> bool:
        """RCPT TO one of the feedback-loop addresses (strictly parsed)."""
        if not path_arg or not self.limits.feedback_addresses:
            return False
        try:
            address = parse_path(path_arg).address
        except AddressError:
            return False
        return address.lower() in self.limits.feedback_addresses

    # --- connection life cycle ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self._original_transport is None
        super().connection_made(transport)
        if not first or self._registered:
            return  # the same connection after STARTTLS
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
            self.limits.session_timeout_s, self._expire, replies.S421_SESSION_TIMEOUT
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
        self._expire(replies.S421_IDLE_TIMEOUT)

    def _expire(self, reply: str) -> None:
        self.close_with(reply)

    def close_with(self, reply: str) -> None:
        """Send a final reply and close (timeouts, shutdown: outside the command loop)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self.conn.closing = True
        self._writer.write(reply.encode() + b"\r\n")
        transport.close()

    def _pending_input(self) -> bool:
        return bool(getattr(self._reader, "_buffer", b""))

    async def _violation(self, kind: str) -> None:
        metrics.PROTOCOL_VIOLATIONS.labels(kind).inc()
        log.info("protocol violation (%s) from %s", kind, self.conn.peer_ip)
        await self.push(replies.S554_PIPELINING)
        if self.transport is not None:
            self.transport.close()

    async def _handle_client(self) -> None:
        pause = self.limits.greet_pause_s
        if pause > 0:
            await asyncio.sleep(pause)
            if self._pending_input():
                metrics.PROTOCOL_VIOLATIONS.labels("early_talker").inc()
                self.close_with(replies.S554_PIPELINING)
                return
        await super()._handle_client()

    # --- replies ------------------------------------------------------------------------------

    async def push(self, status: AnyStr) -> None:
        text = status.decode("ascii", "replace") if isinstance(status, bytes) else status
        text = replies.rewrite(text)
        if self.conn.closing:
            return
        await super().push(text)
        code, final = text[:3], text[3:4] != "-"
        if not final:
            return
        if code == "421":
            self.conn.closing = True
            if self.transport is not None:
                self.transport.close()
        elif code in replies.ERROR_CODES:
            self.conn.errors += 1
            if self.conn.errors >= self.limits.max_errors:
                metrics.PROTOCOL_VIOLATIONS.labels("too_many_errors").inc()
                await self.push(replies.S421_TOO_MANY_ERRORS)
        elif text == replies.S552_TOO_BIG:
            metrics.TRANSACTIONS.labels("too_big").inc()

    # --- commands -----------------------------------------------------------------------------

    async def smtp_EHLO(self, hostname: str) -> None:
        if self._pending_input():
            await self._violation("pipelining")
            return
        self.command_size_limits.clear()
        await super().smtp_EHLO(hostname)

    async def smtp_HELO(self, hostname: str) -> None:
        if self._pending_input():
            await self._violation("pipelining")
            return
        await super().smtp_HELO(hostname)

    async def smtp_STARTTLS(self, arg: str) -> None:
        # Plaintext sent after STARTTLS in the same packet would be read as if it came over
        # TLS (the STARTTLS command-injection class); refuse instead of silently dropping it.
        if self._pending_input():
            await self._violation("pipelining")
            return
        await super().smtp_STARTTLS(arg)

    async def smtp_DATA(self, arg: str) -> None:
        if self._pending_input():
            await self._violation("pipelining")
            return
        await super().smtp_DATA(arg)

    async def smtp_MAIL(self, arg: str | None) -> None:
        assert self.session is not None
        if self.session.host_name and not self.in_transaction():
            if self.registry.draining:
                await self.push(replies.S421_SHUTTING_DOWN)
                return
            # With feedback addresses any client may start a transaction; RCPT then decides.
            if not self.relay_allowed() and not self.limits.feedback_addresses:
                await self.push(replies.S530_AUTH_REQUIRED)
                return
            if self.conn.messages >= self.limits.max_messages:
                metrics.PROTOCOL_VIOLATIONS.labels("too_many_messages").inc()
                await self.push(replies.S421_TOO_MANY_MESSAGES)
                return
            path_arg = self._strip_command_keyword("FROM:", arg) if arg else None
            if path_arg is not None:
                try:
                    parse_path(path_arg, allow_null=True)
                except AddressError:
                    await self.push(replies.S501_BAD_SENDER)
                    return
        await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str | None) -> None:
        assert self.session is not None
        if self.session.host_name and self.in_transaction():
            path_arg = self._strip_command_keyword("TO:", arg) if arg else None
            if not self.relay_allowed() and not self.is_feedback_path(path_arg):
                await self.push(replies.S530_AUTH_REQUIRED)
                return
            if path_arg is not None:
                try:
                    parse_path(path_arg)
                except AddressError as exc:
                    if exc.kind == "relay_trick":
                        reply, reason = replies.S554_RELAY_DENIED, "relay_denied"
                    else:
                        reply, reason = replies.S501_BAD_RECIPIENT, "syntax"
                    self._on_rejected(self, path_arg, reply, reason)
                    await self.push(reply)
                    return
        await super().smtp_RCPT(arg)
