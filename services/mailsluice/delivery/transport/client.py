"""The SMTP client of delivery workers: one call delivers one message to the recipients of one
destination and returns one result per recipient; remote, DNS and TLS trouble become results,
never exceptions.

Recipients are grouped by domain, each group routed and sent over a connection from the pool in
`connection_pool` (`smtp_connection` opens connections, negotiates TLS and writes the wire-ready
DATA payload); a pooled connection found dead at MAIL FROM is replaced. The envelope's routing
key brings per-destination limits (`transport_limits`: messages per connection, recipients per
transaction, TLS, connection rate), and a hosted domain's MX hosts are reported to `on_mx` so
the shaper can roll the domain up into its provider before its limits are looked up.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import aiosmtplib
import dns.asyncresolver

from mailsluice.contracts.envelope import Envelope
from mailsluice.delivery.shaping.limiter import shards_of
from mailsluice.delivery.transport.connection import (
    CONNECTIONS,
    Connection,
    HopError,
    PoolKey,
    StaleConnection,
    send_data,
    wire_data,
)
from mailsluice.delivery.transport.connection_pool import ConnectionPool, ConnectRateLimited
from mailsluice.delivery.transport.limits import (
    CONNECT_WAIT_MAX_S,
    ConnectGates,
    Destination,
    LimitsLookup,
    MxObserver,
    TransportLimits,
    batches,
    destination,
    shaper_limits,
)
from mailsluice.delivery.transport.replies import (
    S451_CONNECT_FAILED,
    S451_DROPPED,
    S451_LOCAL_ERROR,
    S451_TIMEOUT,
    S552_TOO_BIG,
    S553_BAD_ADDRESS,
    S553_NEEDS_SMTPUTF8,
    Reply,
    split_reply,
    with_detail,
)
from mailsluice.delivery.transport.routing import Route, RouteFailure, Router
from mailsluice.delivery.transport.settings import OutboundSettings
from mailsluice.metrics.delivery import SMTP_SECONDS, count_attempt
from mailsluice.metrics.labels import Stopwatch

__all__ = ["RecipientResult", "Transport", "shaper_limits", "wire_data"]

log = logging.getLogger(__name__)

_UNSAFE_ADDRESS = re.compile(r"[\x00-\x1f\x7f<>]")


@dataclass(frozen=True)
class RecipientResult:
    recipient: str
    code: int
    enhanced: str
    text: str
    remote: str = ""

    @property
    def kind(self) -> Literal["delivered", "transient", "permanent"]:
        if 200 <= self.code < 300:
            return "delivered"
        if 500 <= self.code < 600:
            return "permanent"
        return "transient"


class _Txn:
    """Per-recipient results of one transaction as they come in."""

    def __init__(self, remote: str, rcpts: list[str]) -> None:
        self.remote = remote
        self.rcpts = rcpts
        self.results: dict[str, RecipientResult] = {}

    def remote_reply(self, targets: list[str], resp: aiosmtplib.SMTPResponse) -> None:
        enhanced, text = split_reply(resp.code, resp.message)
        for rcpt in targets:
            self.results[rcpt] = RecipientResult(rcpt, resp.code, enhanced, text, self.remote)

    def local(self, targets: list[str], reply: Reply) -> None:
        for rcpt in targets:
            self.results[rcpt] = RecipientResult(rcpt, *reply, self.remote)

    def pending(self) -> list[str]:
        return [r for r in self.rcpts if r not in self.results]

    def ordered(self) -> list[RecipientResult]:
        return [self.results[r] for r in self.rcpts]


class Transport:
    """Delivers messages over SMTP; see the module docstring."""

    def __init__(
        self,
        settings: OutboundSettings,
        resolver: dns.asyncresolver.Resolver,
        *,
        clock: Callable[[], float] = time.monotonic,
        router: Router | None = None,
        limits: LimitsLookup | None = None,
        on_mx: MxObserver | None = None,
        connect_wait_max_s: float = CONNECT_WAIT_MAX_S,
    ) -> None:
        """`limits(routing_key)` gives a destination's connection-level limits (none: the
        settings alone); `on_mx(routing_key, mx_hosts)` hears the MX hosts of a routing key that
        is a domain, whenever a send routes it by MX."""
        self._settings = settings
        self._clock = clock
        self._router = router or Router.from_resolver(settings, resolver, clock=clock)
        self._pool = ConnectionPool(settings, clock=clock)
        self._limits = limits
        self._on_mx = on_mx
        self._gates = ConnectGates()
        self._connect_wait_max_s = connect_wait_max_s

    @property
    def router(self) -> Router:
        return self._router

    @property
    def connections_opened(self) -> int:
        """Connections opened so far (for tests and metrics)."""
        return self._pool.connections_opened

    @property
    def _idle(self) -> dict[PoolKey, list[Connection]]:
        # The idle pool, for tests that reach into it.
        return self._pool.idle

    # --- public ----------------------------------------------------------------------------

    async def send(self, env: Envelope, message: bytes) -> list[RecipientResult]:
        """Deliver to every recipient of `env`; one result per recipient, in order."""
        payload = wire_data(message)
        groups: dict[str, list[str]] = {}
        for rcpt in env.recipients:
            groups.setdefault(rcpt.rpartition("@")[2].lower(), []).append(rcpt)
        results: dict[str, RecipientResult] = {}
        for domain, rcpts in groups.items():
            for res in await self._send_domain(env, domain, rcpts, payload):
                results[res.recipient] = res
        ordered = [results[r] for r in env.recipients]
        count_attempt(env, ordered, time.time())
        return ordered

    async def close(self) -> None:
        await self._pool.close()

    # --- one destination -------------------------------------------------------------------

    async def _send_domain(
        self, env: Envelope, domain: str, rcpts: list[str], payload: bytes
    ) -> list[RecipientResult]:
        try:
            route = await self._router.route(domain)
            if isinstance(route, RouteFailure):
                return [RecipientResult(r, route.code, route.enhanced, route.text) for r in rcpts]
            dest = self._destination(env, domain, route)
            return await self._send_batches(route, dest, env.sender, rcpts, payload)
        except Exception:
            # A bug here must not lose the message: the caller retries a transient result.
            log.exception("transport failed unexpectedly", extra={"destination": "-"})
            return [RecipientResult(r, *S451_LOCAL_ERROR) for r in rcpts]

    def _destination(self, env: Envelope, domain: str, route: Route) -> Destination:
        """The routing key's limits, after telling the shaper the MX hosts of a hosted domain
        (so the limits are already its provider's)."""
        key = env.routing_key
        if self._on_mx is not None and route.mx_hosts and shards_of(key)[0] == domain:
            self._on_mx(key, route.mx_hosts)
        limits = self._limits(key) if self._limits is not None else TransportLimits()
        gate = self._gates.get(key, limits.connection_rate, self._clock())
        return destination(
            key,
            env.pool,
            limits,
            self._settings,
            static=route.static,
            gate=gate,
            max_wait_s=self._connect_wait_max_s,
        )

    async def _send_batches(
        self, route: Route, dest: Destination, sender: str, rcpts: list[str], payload: bytes
    ) -> list[RecipientResult]:
        """One transaction per batch of at most max_recipients; when no hop could be reached,
        the later batches get the same answer without trying again."""
        results: list[RecipientResult] = []
        todo = batches(rcpts, dest.max_recipients)
        for i, batch in enumerate(todo):
            got, connected = await self._send_route(route, dest, sender, batch, payload)
            results += got
            if not connected:
                first = got[0]
                rest = [r for later in todo[i + 1 :] for r in later]
                results += [
                    RecipientResult(r, first.code, first.enhanced, first.text) for r in rest
                ]
                break
        return results

    async def _send_route(
        self, route: Route, dest: Destination, sender: str, rcpts: list[str], payload: bytes
    ) -> tuple[list[RecipientResult], bool]:
        """Results of one transaction, and False when no hop could be reached."""
        last: HopError | None = None
        all_permanent = True
        for hop in route.hops:
            try:
                conn = await self._pool.acquire(hop, dest)
            except ConnectRateLimited as err:
                # Every hop of the destination shares the limit: nothing was sent, try later.
                log.info("connection rate reached", extra={"destination": dest.key})
                last, all_permanent = err, False
                break
            except HopError as err:
                CONNECTIONS.labels("failed").inc()
                log.info("hop failed: %s", err, extra={"remote": str(hop)})
                last = err
                all_permanent = all_permanent and err.code >= 500
                continue
            try:
                return await self._transaction(conn, sender, rcpts, payload), True
            except StaleConnection:
                pass
            # The pooled connection had died unnoticed; nothing was sent, so try a new one.
            try:
                conn = await self._pool.new_connection(hop, dest)
            except ConnectRateLimited as err:
                last, all_permanent = err, False
                break
            except HopError as err:
                CONNECTIONS.labels("failed").inc()
                last = err
                all_permanent = all_permanent and err.code >= 500
                continue
            return await self._transaction(conn, sender, rcpts, payload), True
        assert last is not None  # a Route always has at least one hop
        # A 5xx greeting from every host is permanent; anything transient on the way is not.
        code = last.code if all_permanent or last.code < 500 else S451_CONNECT_FAILED.code
        enhanced = last.enhanced if code == last.code else S451_CONNECT_FAILED.enhanced
        return [RecipientResult(r, code, enhanced, last.text, "") for r in rcpts], False

    async def _transaction(
        self, conn: Connection, sender: str, rcpts: list[str], payload: bytes
    ) -> list[RecipientResult]:
        txn = _Txn(str(conn.hop), rcpts)
        for rcpt in rcpts:
            if not _safe_address(rcpt) or not _safe_address(sender):
                txn.local([rcpt], S553_BAD_ADDRESS)
        try:
            with Stopwatch(SMTP_SECONDS.labels("transaction")):
                await self._exchange(conn, txn, sender, payload)
        except StaleConnection:
            raise
        except aiosmtplib.SMTPTimeoutError as exc:
            conn.close()
            txn.local(txn.pending(), with_detail(S451_TIMEOUT, str(exc)))
        except (aiosmtplib.SMTPException, OSError, ValueError) as exc:
            conn.close()
            txn.local(txn.pending(), with_detail(S451_DROPPED, str(exc) or type(exc).__name__))
        except BaseException:  # cancelled mid-transaction: the session state is unknown
            conn.close()
            raise
        return txn.ordered()

    async def _exchange(self, conn: Connection, txn: _Txn, sender: str, payload: bytes) -> None:
        """MAIL, RCPT for each pending recipient, DATA for the accepted ones."""
        s = self._settings
        pending = txn.pending()
        if not pending:
            return await self._pool.release(conn, dirty=False)
        options = self._mail_options(conn, sender, pending, len(payload))
        if isinstance(options, Reply):
            txn.local(pending, options)
            return await self._pool.release(conn, dirty=False)
        try:
            resp = await conn.command(s.mail_timeout_s, b"MAIL", b"FROM:" + _path(sender), *options)
        except (aiosmtplib.SMTPServerDisconnected, ConnectionError):
            if conn.reused:
                conn.close()
                raise StaleConnection from None
            raise
        if resp.code != 250:
            txn.remote_reply(pending, resp)
            return await self._after_failure(conn, resp.code)
        accepted: list[str] = []
        for i, rcpt in enumerate(pending):
            resp = await conn.command(s.rcpt_timeout_s, b"RCPT", b"TO:" + _path(rcpt))
            if resp.code in (250, 251):
                accepted.append(rcpt)
                continue
            txn.remote_reply([rcpt], resp)
            if resp.code == 421:  # service closing: the rest were never asked
                txn.remote_reply([*accepted, *pending[i + 1 :]], resp)
                conn.close()
                return None
        if not accepted:
            return await self._after_failure(conn, 0)
        resp = await send_data(conn, payload, s)
        txn.remote_reply(accepted, resp)
        if resp.code != 250:
            return await self._after_failure(conn, resp.code)
        conn.sent += 1
        return await self._pool.release(conn, dirty=False)

    def _mail_options(
        self, conn: Connection, sender: str, rcpts: list[str], size: int
    ) -> list[bytes] | Reply:
        smtp = conn.smtp
        options: list[bytes] = []
        limit = smtp.esmtp_extensions.get("size", "")
        if limit.isdigit() and int(limit) and size > int(limit):
            return S552_TOO_BIG
        if smtp.supports_extension("size"):
            options.append(b"SIZE=%d" % size)
        if smtp.supports_extension("8bitmime"):
            options.append(b"BODY=8BITMIME")
        if not all(a.isascii() for a in (sender, *rcpts)):
            if not smtp.supports_extension("smtputf8"):
                return S553_NEEDS_SMTPUTF8
            options.append(b"SMTPUTF8")
        return options

    async def _after_failure(self, conn: Connection, code: int) -> None:
        if code == 421 or not conn.usable():
            conn.close()
            return
        await self._pool.release(conn, dirty=True)


def _safe_address(address: str) -> bool:
    """No controls or angle brackets, and spaces only in a quoted local part: nothing that
    could change the command line."""
    if _UNSAFE_ADDRESS.search(address):
        return False
    return " " not in address or address.startswith('"')


def _path(address: str) -> bytes:
    """An envelope address as an SMTP path: '<local@domain>', or '<>' for the null sender."""
    return b"<" + address.encode("utf-8") + b">"
