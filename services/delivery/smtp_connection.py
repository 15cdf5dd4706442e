"""Outbound SMTP connections of the delivery transport: opening the socket, greeting and
EHLO/HELO, STARTTLS by policy, the raw DATA write, and a bounded pool of idle connections.

Connections are reused per (address, port, source address): idle ones wait in the pool for
`idle_keep_s`, each carries at most `messages_per_connection` messages; one idle for more than
a moment is checked with RSET first. The message body is normalised to CRLF and dot-stuffed by
`wire_data`, so what goes on the wire can never end the DATA phase early (SMTP smuggling).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

import aiosmtplib

from mailsluice.delivery.outbound_settings import OutboundSettings
from mailsluice.delivery.replies import (
    S451_CONNECT_FAILED,
    S451_DROPPED,
    S451_TIMEOUT,
    S451_TLS_FAILED,
    S451_TLS_NOT_OFFERED,
    split_reply,
    with_detail,
)
from mailsluice.delivery.routing import Hop
from mailsluice.metrics import SMTP_SECONDS, Delivery, Stopwatch

CONNECTIONS = Delivery.SMTP_CONNECTIONS

# A pooled connection idle longer than this is checked with RSET before it is used again.
REUSE_PROBE_AFTER_S = 2.0

_LINE_ENDINGS = re.compile(rb"\r\n|\r|\n")
_LEADING_DOT = re.compile(rb"(?m)^\.")

PoolKey = tuple[str, int, str]


def wire_data(message: bytes) -> bytes:
    """The DATA payload for a message: every CR, LF or CRLF becomes CRLF, lines starting with '.'
    get another '.', and the terminating CRLF.CRLF is appended (RFC 5321 §4.5.2)."""
    body = _LINE_ENDINGS.sub(b"\r\n", message)
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    return _LEADING_DOT.sub(b"..", body) + b".\r\n"


class HopError(Exception):
    """A failure before MAIL FROM on one hop: the next hop may do better."""

    def __init__(self, code: int, enhanced: str, text: str) -> None:
        super().__init__(f"{code} {enhanced} {text}")
        self.code, self.enhanced, self.text = code, enhanced, text


class TlsFailed(HopError):
    """The TLS handshake failed; the session is unusable."""


class StaleConnection(Exception):
    """A pooled connection turned out closed before anything of this transaction was sent."""


@dataclass
class Connection:
    smtp: aiosmtplib.SMTP
    hop: Hop
    key: PoolKey
    sent: int = 0
    idle_since: float = 0.0
    closed: bool = field(default=False)
    reused: bool = False

    def usable(self) -> bool:
        return not self.closed and self.smtp.is_connected

    def close(self) -> None:
        self.closed = True
        self.smtp.close()

    async def command(self, limit_s: float, *args: bytes) -> aiosmtplib.SMTPResponse:
        return await self.smtp.execute_command(*args, timeout=limit_s)


async def send_data(
    conn: Connection, payload: bytes, settings: OutboundSettings
) -> aiosmtplib.SMTPResponse:
    """DATA, then the already wire-ready payload; the reply to DATA or to the end of data."""
    s = settings
    resp = await conn.command(s.data_init_timeout_s, b"DATA")
    if resp.code != 354:
        return resp
    protocol = conn.smtp.protocol
    if protocol is None:
        raise aiosmtplib.SMTPServerDisconnected("connection lost before the message")
    # Written as one block: the payload is already CRLF-normalised and dot-stuffed, so
    # aiosmtplib's own DATA helper (which would stuff again) is not used. Like that helper,
    # mark a reply as expected first, or a fast reply is dropped as unsolicited.
    protocol._response_pending = True
    protocol.write(payload)
    try:
        await asyncio.wait_for(protocol._drain_helper(), s.data_block_timeout_s)
    except TimeoutError as exc:
        raise aiosmtplib.SMTPReadTimeoutError("timed out sending the message") from exc
    return await protocol.read_response(timeout=s.data_end_timeout_s)


async def quit_connection(conn: Connection) -> None:
    if conn.usable():
        with contextlib.suppress(aiosmtplib.SMTPException, OSError):
            await conn.smtp.execute_command(b"QUIT", timeout=5.0)
    conn.close()


def make_tls_context(verify: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if not verify:
        # Opportunistic TLS between MTAs: encryption without authentication (RFC 7435).
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


async def open_socket(hop: Hop, settings: OutboundSettings) -> socket.socket:
    """Connect a socket ourselves: the connect timeout differs from the greeting timeout
    (RFC 5321 §4.5.3.2), and the source address is bound here."""
    family = socket.AF_INET6 if ":" in hop.address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        if settings.source_address:
            sock.bind((settings.source_address, 0))
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(
            loop.sock_connect(sock, (hop.address, hop.port)), settings.connect_timeout_s
        )
    except TimeoutError:
        sock.close()
        raise HopError(*with_detail(S451_CONNECT_FAILED, f"{hop}: connect timed out")) from None
    except OSError as exc:
        sock.close()
        detail = f"{hop}: {exc.strerror or exc}"
        raise HopError(*with_detail(S451_CONNECT_FAILED, detail)) from None
    except BaseException:
        sock.close()
        raise
    return sock


async def hello(smtp: aiosmtplib.SMTP, settings: OutboundSettings) -> None:
    try:
        await smtp.ehlo(timeout=settings.command_timeout_s)
    except aiosmtplib.SMTPHeloError as exc:
        # An old server that does not know EHLO (RFC 5321 §4.1.4): plain HELO, no extensions.
        if exc.code not in (500, 502) or not smtp.is_connected:
            raise
        await smtp.helo(timeout=settings.command_timeout_s)


async def maybe_starttls(conn: Connection, settings: OutboundSettings, *, plaintext: bool) -> None:
    policy = settings.tls_policy
    smtp = conn.smtp
    if policy == "none" or plaintext:
        return
    if not smtp.supports_extension("starttls"):
        if policy == "required":
            raise HopError(*S451_TLS_NOT_OFFERED)
        return
    try:
        with Stopwatch(SMTP_SECONDS.labels("tls")):
            await smtp.starttls(server_hostname=conn.hop.name, timeout=settings.command_timeout_s)
        await smtp.ehlo(timeout=settings.command_timeout_s)
    except aiosmtplib.SMTPResponseException as exc:
        if policy == "opportunistic" and 400 <= exc.code < 500 and exc.code != 421:
            return  # offered STARTTLS, then refused it: the session goes on in plaintext
        raise HopError(*with_detail(S451_TLS_FAILED, f"{exc.code} {exc.message}")) from None
    except (ssl.SSLError, aiosmtplib.SMTPException, OSError) as exc:
        detail = str(exc) or type(exc).__name__
        raise TlsFailed(*with_detail(S451_TLS_FAILED, detail)) from None


async def start_session(
    conn: Connection, settings: OutboundSettings, *, plaintext: bool
) -> Connection:
    """Greeting, EHLO/HELO and STARTTLS on a connected socket; any failure closes `conn` and
    becomes a HopError."""
    hop = conn.hop
    try:
        await conn.smtp.connect(timeout=settings.greeting_timeout_s)
        await hello(conn.smtp, settings)
        await maybe_starttls(conn, settings, plaintext=plaintext)
    except HopError:
        conn.close()
        raise
    except aiosmtplib.SMTPResponseException as exc:
        conn.close()
        enhanced, text = split_reply(exc.code, exc.message)
        raise HopError(exc.code, enhanced, text) from None
    except aiosmtplib.SMTPTimeoutError as exc:
        conn.close()
        raise HopError(*with_detail(S451_TIMEOUT, f"{hop}: {exc}")) from None
    except (aiosmtplib.SMTPException, OSError) as exc:
        conn.close()
        raise HopError(*with_detail(S451_DROPPED, f"{hop}: {exc}")) from None
    except BaseException:
        conn.close()
        raise
    return conn


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

    def _key(self, hop: Hop) -> PoolKey:
        return (hop.address, hop.port, self._settings.source_address)

    async def acquire(self, hop: Hop) -> Connection:
        """An idle connection to `hop` that still answers, or a new one."""
        key = self._key(hop)
        while self.idle.get(key):
            conn = self.idle[key].pop()
            self._idle_count -= 1
            if not self._fresh(conn):
                await quit_connection(conn)
                continue
            conn.reused = True
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
        return await self.new_connection(hop)

    async def new_connection(self, hop: Hop) -> Connection:
        try:
            return await self._connect(hop, plaintext=False)
        except TlsFailed:
            if self._settings.tls_policy != "opportunistic":
                raise
        # Like Exim's tls_tempfail_tryclear: opportunistic TLS that fails to negotiate is
        # retried in the clear once, or a server with a broken certificate store gets no mail.
        return await self._connect(hop, plaintext=True)

    async def _connect(self, hop: Hop, *, plaintext: bool) -> Connection:
        s = self._settings
        with Stopwatch(SMTP_SECONDS.labels("connect")):
            sock = await open_socket(hop, s)
        self.connections_opened += 1
        CONNECTIONS.labels("opened").inc()
        smtp = aiosmtplib.SMTP(
            hostname=hop.address,
            local_hostname=s.ehlo_name,
            timeout=s.command_timeout_s,
            start_tls=False,
            validate_certs=s.tls_verify,
            tls_context=self._tls_context,
            sock=sock,
        )
        return await start_session(Connection(smtp, hop, self._key(hop)), s, plaintext=plaintext)

    async def release(self, conn: Connection, *, dirty: bool) -> None:
        """Return a connection to the pool, or QUIT it when it has carried enough."""
        s = self._settings
        if not conn.usable():
            return
        if conn.sent >= s.messages_per_connection or s.idle_keep_s <= 0 or self._closed:
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
