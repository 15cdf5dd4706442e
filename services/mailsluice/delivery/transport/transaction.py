"""One mail transaction on an open connection: MAIL FROM, RCPT TO for each recipient, DATA for
the accepted ones, and a result per recipient saying where its reply came from.

Remote trouble in the middle (a timeout, a dropped connection) becomes a 451 result at the
phase it happened in; a pooled connection found dead at MAIL FROM raises StaleConnection so the
caller opens a fresh one (nothing was sent). The connection goes back to the pool, is reset
after a refused transaction, or is closed after a 421.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import aiosmtplib

from mailsluice.delivery.transport.connection import (
    Connection,
    ResultPhase,
    StaleConnection,
    send_data,
)
from mailsluice.delivery.transport.connection_pool import ConnectionPool
from mailsluice.delivery.transport.replies import (
    S451_DROPPED,
    S451_TIMEOUT,
    S552_TOO_BIG,
    S553_BAD_ADDRESS,
    S553_NEEDS_SMTPUTF8,
    Reply,
    split_reply,
    with_detail,
)
from mailsluice.delivery.transport.settings import OutboundSettings
from mailsluice.metrics.delivery import SMTP_SECONDS
from mailsluice.metrics.labels import Stopwatch
from mailsluice.policy.replies import Phase

_UNSAFE_ADDRESS = re.compile(r"[\x00-\x1f\x7f<>]")


@dataclass(frozen=True)
class RecipientResult:
    """One recipient's reply, and what shaping needs to read it.

    `phase` is where in the SMTP dialogue the reply came from ("connect", "greeting", "ehlo",
    "tls", "mail", "rcpt", "data"); a timeout, a dropped connection or a missing STARTTLS count
    at the phase they happened in. It is "" for a reply made up without the remote: routing,
    our own connection rate, local checks of the message or addresses. `sent_on_connection` is
    how many messages the connection had carried before this transaction; `source` is the
    local address the send went out from ("" when none is configured)."""

    recipient: str
    code: int
    enhanced: str
    text: str
    remote: str = ""
    phase: ResultPhase = ""
    sent_on_connection: int = 0
    source: str = ""

    @property
    def kind(self) -> Literal["delivered", "transient", "permanent"]:
        if 200 <= self.code < 300:
            return "delivered"
        if 500 <= self.code < 600:
            return "permanent"
        return "transient"


class Transaction:
    """One transaction over `conn`, its per-recipient results as they come in; `phase` is the
    command in progress, so a timeout or drop is reported where it happened."""

    def __init__(
        self, conn: Connection, pool: ConnectionPool, settings: OutboundSettings, rcpts: list[str]
    ) -> None:
        self.conn, self.pool, self.settings = conn, pool, settings
        self.remote = str(conn.hop)
        self.source = conn.source
        self.sent_before = conn.sent
        self.rcpts = rcpts
        self.phase: Phase = "mail"
        self.results: dict[str, RecipientResult] = {}

    async def run(self, sender: str, payload: bytes) -> list[RecipientResult]:
        """The results of the transaction; the connection is released or closed after it."""
        conn = self.conn
        for rcpt in self.rcpts:
            if not _safe_address(rcpt) or not _safe_address(sender):
                self.local([rcpt], S553_BAD_ADDRESS)
        try:
            with Stopwatch(SMTP_SECONDS.labels("transaction")):
                await self._exchange(sender, payload)
        except StaleConnection:
            raise
        except aiosmtplib.SMTPTimeoutError as exc:
            conn.close()
            self.local(self.pending(), with_detail(S451_TIMEOUT, str(exc)), self.phase)
        except (aiosmtplib.SMTPException, OSError, ValueError) as exc:
            conn.close()
            detail = str(exc) or type(exc).__name__
            self.local(self.pending(), with_detail(S451_DROPPED, detail), self.phase)
        except BaseException:  # cancelled mid-transaction: the session state is unknown
            conn.close()
            raise
        return [self.results[r] for r in self.rcpts]

    def remote_reply(self, targets: list[str], resp: aiosmtplib.SMTPResponse) -> None:
        enhanced, text = split_reply(resp.code, resp.message)
        for rcpt in targets:
            self.results[rcpt] = self._result(rcpt, resp.code, enhanced, text, self.phase)

    def local(self, targets: list[str], reply: Reply, phase: ResultPhase = "") -> None:
        for rcpt in targets:
            self.results[rcpt] = self._result(rcpt, *reply, phase)

    def _result(
        self, rcpt: str, code: int, enhanced: str, text: str, phase: ResultPhase
    ) -> RecipientResult:
        return RecipientResult(
            rcpt, code, enhanced, text, self.remote, phase, self.sent_before, self.source
        )

    def pending(self) -> list[str]:
        return [r for r in self.rcpts if r not in self.results]

    async def _exchange(self, sender: str, payload: bytes) -> None:
        """MAIL, RCPT for each pending recipient, DATA for the accepted ones."""
        conn, s = self.conn, self.settings
        pending = self.pending()
        if not pending:
            return await self.pool.release(conn, dirty=False)
        options = _mail_options(conn, sender, pending, len(payload))
        if isinstance(options, Reply):
            self.local(pending, options)
            return await self.pool.release(conn, dirty=False)
        try:
            mail_from = b"FROM:" + _path(sender)
            resp = await conn.command(s.mail_timeout_s, b"MAIL", mail_from, *options)
        except (aiosmtplib.SMTPServerDisconnected, ConnectionError):
            if conn.reused:
                conn.close()
                raise StaleConnection from None
            raise
        if resp.code != 250:
            self.remote_reply(pending, resp)
            return await self._after_failure(resp.code)
        self.phase = "rcpt"
        accepted: list[str] = []
        for i, rcpt in enumerate(pending):
            resp = await conn.command(s.rcpt_timeout_s, b"RCPT", b"TO:" + _path(rcpt))
            if resp.code in (250, 251):
                accepted.append(rcpt)
                continue
            self.remote_reply([rcpt], resp)
            if resp.code == 421:  # service closing: the rest were never asked
                self.remote_reply([*accepted, *pending[i + 1 :]], resp)
                conn.close()
                return None
        if not accepted:
            return await self._after_failure(0)
        self.phase = "data"
        resp = await send_data(conn, payload, s)
        self.remote_reply(accepted, resp)
        if resp.code != 250:
            return await self._after_failure(resp.code)
        conn.sent += 1
        return await self.pool.release(conn, dirty=False)

    async def _after_failure(self, code: int) -> None:
        if code == 421 or not self.conn.usable():
            self.conn.close()
            return
        await self.pool.release(self.conn, dirty=True)


def _mail_options(
    conn: Connection, sender: str, rcpts: list[str], size: int
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


def _safe_address(address: str) -> bool:
    """No controls or angle brackets, and spaces only in a quoted local part: nothing that
    could change the command line."""
    if _UNSAFE_ADDRESS.search(address):
        return False
    return " " not in address or address.startswith('"')


def _path(address: str) -> bytes:
    """An envelope address as an SMTP path: '<local@domain>', or '<>' for the null sender."""
    return b"<" + address.encode("utf-8") + b">"
