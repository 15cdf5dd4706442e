"""The SMTP client of delivery workers: one call delivers one message to the recipients of one
destination and returns one result per recipient; remote, DNS and TLS trouble become results,
never exceptions.

Recipients are grouped by domain, each group routed and sent over a connection from the pool in
`connection_pool` (`connection` opens connections, negotiates TLS and writes the wire-ready
DATA payload; `transaction` runs MAIL, RCPT and DATA, pipelined where the server allows it);
a pooled connection found dead at MAIL FROM is replaced. The envelope's routing key brings
per-destination limits (`limits`: messages per connection, recipients per transaction, TLS,
connection rate), on every route, and a hosted domain's MX hosts are reported to `on_mx` so the
shaper can roll the domain up into its provider before its limits are looked up.

Each send goes out from one source address of MAILSLUICE_OUTBOUND_SOURCE_ADDRESSES (the caller's
pick, by default the first): its connections are bound to it and pooled apart from the others',
since providers count rates, connections and reputation per source IP.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

import dns.asyncresolver

from mailsluice.contracts.envelope import Envelope
from mailsluice.contracts.routing import base_of
from mailsluice.delivery.transport.connection import (
    CONNECTIONS,
    Connection,
    HopError,
    PoolKey,
    StaleConnection,
    wire_data,
)
from mailsluice.delivery.transport.connection_pool import ConnectionPool, ConnectRateLimited
from mailsluice.delivery.transport.limits import (
    CONNECT_WAIT_MAX_S,
    ConnectGates,
    Destination,
    LimitsLookup,
    MxObserver,
    PerConnection,
    TransportLimits,
    batches,
    destination,
    shaper_limits,
)
from mailsluice.delivery.transport.replies import (
    S451_CONNECT_FAILED,
    S451_LOCAL_ERROR,
    with_detail,
)
from mailsluice.delivery.transport.routing import Route, RouteFailure, Router
from mailsluice.delivery.transport.settings import OutboundSettings
from mailsluice.delivery.transport.signing import Signer
from mailsluice.delivery.transport.transaction import RecipientResult, Transaction
from mailsluice.metrics.delivery import count_attempt

__all__ = ["RecipientResult", "Transport", "shaper_limits", "wire_data"]

log = logging.getLogger(__name__)


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
        per_connection: PerConnection | None = None,
        connect_wait_max_s: float = CONNECT_WAIT_MAX_S,
        signer: Signer | None = None,
    ) -> None:
        """`limits(routing_key)` gives a destination's connection-level limits (none: the
        settings alone); `on_mx(routing_key, mx_hosts)` hears the MX hosts of a routing key that
        is a domain, whenever a send routes it by MX; `per_connection(routing_key, source)` the
        messages a connection may carry as learned from the destination's replies; `signer`
        puts DKIM signatures on each message as it goes out (signing.DkimSigner)."""
        self._settings = settings
        self._clock = clock
        self._router = router or Router.from_resolver(settings, resolver, clock=clock)
        self._pool = ConnectionPool(settings, clock=clock)
        self._limits = limits
        self._on_mx = on_mx
        self._per_connection = per_connection
        self._gates = ConnectGates()
        self._connect_wait_max_s = connect_wait_max_s
        self._signer = signer

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

    async def send(
        self, env: Envelope, message: bytes, *, source: str = ""
    ) -> list[RecipientResult]:
        """Deliver to every recipient of `env` from `source` (one of the configured source
        addresses; "": the first, or any when none is configured); one result per recipient,
        in order."""
        bound = self._source(source)
        if bound is None:
            log.error("source address %s is not configured", source)
            reply = with_detail(S451_LOCAL_ERROR, f"source address {source} is not configured")
            return [RecipientResult(r, *reply, source=source) for r in env.recipients]
        if self._signer is not None:
            message = self._signer(env, message)
        payload = wire_data(message)
        groups: dict[str, list[str]] = {}
        for rcpt in env.recipients:
            groups.setdefault(rcpt.rpartition("@")[2].lower(), []).append(rcpt)
        results: dict[str, RecipientResult] = {}
        for domain, rcpts in groups.items():
            for res in await self._send_domain(env, domain, rcpts, payload, bound):
                results[res.recipient] = res
        ordered = [results[r] for r in env.recipients]
        count_attempt(env, ordered, time.time())
        return ordered

    def _source(self, source: str) -> str | None:
        """The address a send binds to; None when `source` is not a configured one."""
        configured = self._settings.source_addresses
        if not source:
            return configured[0] if configured else ""
        return source if source in configured else None

    async def close(self) -> None:
        await self._pool.close()

    # --- one destination -------------------------------------------------------------------

    async def _send_domain(
        self, env: Envelope, domain: str, rcpts: list[str], payload: bytes, source: str
    ) -> list[RecipientResult]:
        try:
            route = await self._router.route(domain)
            if isinstance(route, RouteFailure):
                reply = (route.code, route.enhanced, route.text)
                return [RecipientResult(r, *reply, source=source) for r in rcpts]
            dest = self._destination(env, domain, route, source)
            return await self._send_batches(route, dest, env.sender, rcpts, payload)
        except Exception:
            # A bug here must not lose the message: the caller retries a transient result.
            log.exception("transport failed unexpectedly", extra={"destination": "-"})
            return [RecipientResult(r, *S451_LOCAL_ERROR, source=source) for r in rcpts]

    def _destination(self, env: Envelope, domain: str, route: Route, source: str) -> Destination:
        """The routing key's limits, after telling the shaper the MX hosts of a hosted domain
        (so the limits are already its provider's); the same on every kind of route."""
        key = env.routing_key
        if self._on_mx is not None and route.mx_hosts and base_of(key) == domain:
            self._on_mx(key, route.mx_hosts)
        limits = self._limits(key) if self._limits is not None else TransportLimits()
        if self._per_connection is not None:
            learned = self._per_connection(key, source)
            cap = limits.messages_per_connection
            limits = dataclasses.replace(
                limits, messages_per_connection=min(cap or learned, learned)
            )
        gate = self._gates.get(key, limits.connection_rate, self._clock(), source)
        return destination(
            key,
            env.pool,
            limits,
            self._settings,
            source=source,
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
                rest = [r for later in todo[i + 1 :] for r in later]
                results += [dataclasses.replace(got[0], recipient=r) for r in rest]
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
        failed = RecipientResult("", code, enhanced, last.text, "", last.phase, 0, dest.source)
        return [dataclasses.replace(failed, recipient=r) for r in rcpts], False

    async def _transaction(
        self, conn: Connection, sender: str, rcpts: list[str], payload: bytes
    ) -> list[RecipientResult]:
        return await Transaction(conn, self._pool, self._settings, rcpts).run(sender, payload)
