"""One mail transaction on an open connection: MAIL FROM, RCPT TO for each recipient, DATA for
the accepted ones, and a result per recipient saying where its reply came from.

When the server offers PIPELINING (RFC 2920), MAIL, every RCPT and DATA go out in one write and
their replies are read in order (`pipelining.ReplyReader`): a refused MAIL's reply goes to every
recipient, each RCPT keeps its own, DATA's goes to the accepted ones; the body follows a 354
only if a recipient was accepted. Otherwise each command waits for its reply.

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
from mailsluice.delivery.transport.pipelining import ReplyReader
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
        """MAIL, RCPT for each pending recipient, DATA for the accepted ones: pipelined when
        the server offers PIPELINING, else one command at a time."""
        conn = self.conn
        pending = self.pending()
        if not pending:
            return await self.pool.release(conn, dirty=False)
        options = _mail_options(conn, sender, pending, len(payload))
        if isinstance(options, Reply):
            self.local(pending, options)
            return await self.pool.release(conn, dirty=False)
        mail = [b"MAIL", b"FROM:" + _path(sender), *options]
        if conn.smtp.supports_extension("pipelining"):
            return await self._pipelined(mail, pending, payload)
        return await self._lockstep(mail, pending, payload)

    async def _lockstep(self, mail: list[bytes], pending: list[str], payload: bytes) -> None:
        conn, s = self.conn, self.settings
        try:
            resp = await conn.command(s.mail_timeout_s, *mail)
        except (aiosmtplib.SMTPServerDisconnected, ConnectionError):
            self._stale_if_reused()
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

    async def _pipelined(self, mail: list[bytes], pending: list[str], payload: bytes) -> None:
        """RFC 2920: MAIL, every RCPT and DATA in one write, their replies read in order by a
        ReplyReader; the connection goes back to aiosmtplib's protocol before it is released."""
        conn = self.conn
        rcpts = [b"RCPT TO:" + _path(r) for r in pending]
        # Addresses passed _safe_address and options are ours: no line can be injected.
        group = b"\r\n".join([b" ".join(mail), *rcpts, b"DATA", b""])
        try:
            reader = ReplyReader.attach(conn.smtp)
        except aiosmtplib.SMTPServerDisconnected:
            self._stale_if_reused()
            raise
        try:
            failed = await self._group(reader, group, pending, payload)
        finally:
            reader.detach()
        if failed is not None:
            return await self._after_failure(failed)
        conn.sent += 1
        return await self.pool.release(conn, dirty=False)

    async def _group(
        self, reader: ReplyReader, group: bytes, pending: list[str], payload: bytes
    ) -> int | None:
        """The replies to a pipelined group, then the body if it may go; None when the message
        was accepted, else the code that decides the connection's fate (421: close)."""
        s = self.settings
        try:
            reader.write(group)
            mail = await reader.reply(s.mail_timeout_s)
        except (aiosmtplib.SMTPServerDisconnected, ConnectionError):
            self._stale_if_reused()
            raise
        if mail.code != 250:  # every recipient gets MAIL's reply; the rest is read, unused
            self.remote_reply(pending, mail)
            if mail.code == 421:
                return 421
        self.phase = "rcpt"
        accepted = await self._rcpt_replies(reader, pending, mail.code == 250)
        if accepted is None:
            return 421
        self.phase = "data"
        data = await reader.reply(s.data_init_timeout_s)
        if data.code == 421:
            self.remote_reply(self.pending(), data)
            return 421
        if data.code != 354:
            self.remote_reply(accepted, data)  # no recipient accepted: nobody left to tell
            return data.code
        if not accepted:
            # A 354 with no recipient accepted (a broken server): like Postfix's smtp client
            # (smtp_proto.c, "just send '.'"), end the empty DATA at once and ignore its reply,
            # so no message goes out; each recipient keeps its MAIL or RCPT reply.
            reader.write(b".\r\n")
            return (await reader.reply(s.data_end_timeout_s)).code
        reader.write(payload)  # wire-ready: CRLF-normalised, dot-stuffed, terminated
        await reader.drain(s.data_block_timeout_s)
        end = await reader.reply(s.data_end_timeout_s)
        self.remote_reply(accepted, end)
        return None if end.code == 250 else end.code

    async def _rcpt_replies(
        self, reader: ReplyReader, pending: list[str], mail_ok: bool
    ) -> list[str] | None:
        """The recipients whose RCPT was accepted; None after a 421, when the recipients not
        yet answered (accepted ones included) got it."""
        accepted: list[str] = []
        for rcpt in pending:
            resp = await reader.reply(self.settings.rcpt_timeout_s)
            if resp.code == 421:
                self.remote_reply(self.pending(), resp)
                return None
            if not mail_ok:
                continue  # answered with MAIL's reply already
            if resp.code in (250, 251):
                accepted.append(rcpt)
            else:
                self.remote_reply([rcpt], resp)
        return accepted

    def _stale_if_reused(self) -> None:
        """A pooled connection found dead before any reply: nothing was delivered, so the
        caller may try a new one."""
        if self.conn.reused:
            self.conn.close()
            raise StaleConnection from None

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
