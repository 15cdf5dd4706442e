"""The bounded pool of outbound SMTP connections, and the per-destination rules for taking one.

Connections are reused per (address, port, source address), so one opened from a source
address never carries mail of another: idle ones wait in the pool for `idle_keep_s`; one idle
for more than a moment is checked with RSET first. Each send names its
`Destination` (transport_limits): a connection carries at most that destination's messages per
connection, a TLS-required destination only takes encrypted ones, and a new connection needs a
token of the destination's connection rate — without one, the send takes an idle connection
released meanwhile or waits up to `max_wait_s`, then fails the hop with 451 4.4.5.

The gauge mailsluice_delivery_connections_open counts connections from socket connect to close,
labelled by the pool and provider of the destination they were opened for.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import aiosmtplib

from mailsluice.delivery.transport.connection import (
    CONNECTIONS,
    REUSE_PROBE_AFTER_S,
    Connection,
    HopError,
    PoolKey,
    TlsFailed,
    make_tls_context,
    open_socket,
    quit_connection,
    start_session,
)
from mailsluice.delivery.transport.limits import CONNECT_POLL_S, Destination
from mailsluice.delivery.transport.replies import S451_CONNECTION_RATE
from mailsluice.delivery.transport.routing import Hop
from mailsluice.delivery.transport.settings import OutboundSettings
from mailsluice.metrics.delivery import SMTP_SECONDS, Delivery
from mailsluice.metrics.labels import Stopwatch


class ConnectRateLimited(HopError):
    """The destination's connection rate allowed no new connection in time; other hops of the
    destination share the limit, so the send stops here."""


class ConnectionPool:
    """Opens connections to hops and keeps the idle ones, bounded by `max_idle_connections`;
    a reaper task closes those idle past `idle_keep_s` and ends when the pool is empty."""

    def __init__(self, settings: OutboundSettings, *, clock: Callable[[], float]) -> None:
        self._settings = settings
        self._clock = clock
        self.idle: dict[PoolKey, list[Connection]] = {}
        self._idle_count = 0
        self._reaper: asyncio.Task[None] | None = None
        self._tls_context = make_tls_context(settings.tls_verify)
        self.connections_opened = 0  # for tests and metrics
        self._closed = False

    @staticmethod
    def _key(hop: Hop, dest: Destination) -> PoolKey:
        return (hop.address, hop.port, dest.source)

    async def acquire(self, hop: Hop, dest: Destination) -> Connection:
        """An idle connection to `hop` that still answers and suits `dest`, or a new one when
        the destination's connection rate allows it; meanwhile wait for either."""
        waited = 0.0
        while True:
            conn = await self._reuse(hop, dest)
            if conn is not None:
                return conn
            wait = dest.connect_wait(self._clock())
            if wait <= 0.0:
                return await self.new_connection(hop, dest)
            if waited >= dest.max_wait_s:
                raise ConnectRateLimited(*S451_CONNECTION_RATE)
            step = min(wait, CONNECT_POLL_S, dest.max_wait_s - waited)
            await asyncio.sleep(step)
            waited += step

    async def _reuse(self, hop: Hop, dest: Destination) -> Connection | None:
        """A pooled connection for `dest`, checked with RSET when idle for more than a moment."""
        while conn := self._take_idle(self._key(hop, dest), dest):
            if not self._fresh(conn):
                await quit_connection(conn)
                continue
            conn.reused = True
            conn.max_messages = dest.max_messages
            if self._clock() - conn.idle_since < REUSE_PROBE_AFTER_S:
                # Just used: skip the RSET round trip; a dead one is caught at MAIL FROM.
                CONNECTIONS.labels("reused").inc()
                return conn
            try:
                resp = await conn.command(self._settings.command_timeout_s, b"RSET")
            except (aiosmtplib.SMTPException, OSError):
                conn.close()
                continue
            if resp.code == 250:
                CONNECTIONS.labels("reused").inc()
                return conn
            conn.close()
        return None

    def _take_idle(self, key: PoolKey, dest: Destination) -> Connection | None:
        """The most recently idle connection `dest` may use (a TLS-required destination never
        takes one another destination left in plaintext)."""
        conns = self.idle.get(key, [])
        for i in range(len(conns) - 1, -1, -1):
            if dest.accepts(conns[i].tls) or not conns[i].usable():
                self._idle_count -= 1
                return conns.pop(i)
        return None

    async def new_connection(self, hop: Hop, dest: Destination) -> Connection:
        try:
            return await self._connect(hop, dest, plaintext=False)
        except TlsFailed:
            if dest.tls_policy != "opportunistic":
                raise
        # Like Exim's tls_tempfail_tryclear: opportunistic TLS that fails to negotiate is
        # retried in the clear once, or a server with a broken certificate store gets no mail.
        return await self._connect(hop, dest, plaintext=True)

    async def _admit(self, dest: Destination) -> None:
        """Take a connection token of the destination, waiting up to its max_wait_s."""
        waited = 0.0
        while not dest.try_connect(self._clock()):
            if waited >= dest.max_wait_s:
                raise ConnectRateLimited(*S451_CONNECTION_RATE)
            step = min(dest.connect_wait(self._clock()), dest.max_wait_s - waited)
            step = max(step, CONNECT_POLL_S / 10)
            await asyncio.sleep(step)
            waited += step

    async def _connect(self, hop: Hop, dest: Destination, *, plaintext: bool) -> Connection:
        s = self._settings
        await self._admit(dest)
        with Stopwatch(SMTP_SECONDS.labels("connect")):
            sock = await open_socket(hop, s, dest.source)
        self.connections_opened += 1
        CONNECTIONS.labels("opened").inc()
        gauge = Delivery.CONNECTIONS_OPEN.labels(dest.pool, dest.provider)
        gauge.inc()
        smtp = aiosmtplib.SMTP(
            hostname=hop.address,
            local_hostname=s.ehlo_name,
            timeout=s.command_timeout_s,
            start_tls=False,
            validate_certs=s.tls_verify,
            tls_context=self._tls_context,
            sock=sock,
        )
        conn = Connection(smtp, hop, self._key(hop, dest), max_messages=dest.max_messages)
        conn.open_gauge = gauge  # from here on, close() takes it off the gauge
        policy = dest.tls_policy
        return await start_session(conn, s, plaintext=plaintext, policy=policy)

    async def release(self, conn: Connection, *, dirty: bool) -> None:
        """Return a connection to the pool, or QUIT it when it has carried enough."""
        s = self._settings
        if not conn.usable():
            conn.close()  # dropped by the peer: off the gauge
            return
        limit = min(s.messages_per_connection, conn.max_messages)
        if conn.sent >= limit or s.idle_keep_s <= 0 or self._closed:
            await quit_connection(conn)
            return
        if dirty and not await self._reset(conn):
            return
        while self._idle_count >= s.max_idle_connections and self._evict_oldest():
            pass
        if self._idle_count >= s.max_idle_connections:
            await quit_connection(conn)
            return
        conn.idle_since = self._clock()
        self.idle.setdefault(conn.key, []).append(conn)
        self._idle_count += 1
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.create_task(self._reap())

    async def _reset(self, conn: Connection) -> bool:
        """RSET after a failed transaction; a connection that does not take it is closed."""
        try:
            resp = await conn.command(self._settings.command_timeout_s, b"RSET")
        except (aiosmtplib.SMTPException, OSError):
            conn.close()
            return False
        if resp.code != 250:
            conn.close()
            return False
        return True

    async def close(self) -> None:
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        conns = [c for conns in self.idle.values() for c in conns]
        self.idle.clear()
        self._idle_count = 0
        await asyncio.gather(*(quit_connection(c) for c in conns))

    def _fresh(self, conn: Connection) -> bool:
        return conn.usable() and self._clock() - conn.idle_since < self._settings.idle_keep_s

    def _evict_oldest(self) -> bool:
        oldest: Connection | None = None
        for conns in self.idle.values():
            for c in conns:
                if oldest is None or c.idle_since < oldest.idle_since:
                    oldest = c
        if oldest is None:
            return False
        self.idle[oldest.key].remove(oldest)
        self._idle_count -= 1
        oldest.close()
        return True

    async def _reap(self) -> None:
        """Close idle connections that outlived idle_keep_s; ends when the pool is empty."""
        interval = max(self._settings.idle_keep_s / 4, 0.05)
        while self._idle_count:
            await asyncio.sleep(interval)
            stale = [c for conns in self.idle.values() for c in conns if not self._fresh(c)]
            for conn in stale:
                self.idle[conn.key].remove(conn)
                self._idle_count -= 1
            await asyncio.gather(*(quit_connection(c) for c in stale))
        self.idle = {k: v for k, v in self.idle.items() if v}
