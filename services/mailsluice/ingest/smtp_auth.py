"""AUTH PLAIN and LOGIN for aiosmtpd, with the abuse guard (auth_guard.py) in front of the
password check. The handler exposes them as aiosmtpd's handler `auth_<MECHANISM>` hooks, which
replace aiosmtpd's built-in mechanisms: those drop a PLAIN authzid and cannot wait before a
failure's reply without blocking the event loop.

Order of an attempt: credentials decoded; client IP or username locked out -> 454 4.7.0 (no
password check); a PLAIN authzid other than the authcid -> 535 5.7.8 (counted as a failure:
we do not support proxy authorisation, RFC 4616 §2); password checked in a worker thread (scrypt
takes tens of milliseconds of CPU); locked out meanwhile -> 454 4.7.0 whatever the password;
a failure waits its delay, then 535 5.7.8.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiosmtpd.smtp import MISSING, AuthResult

from mailsluice.ingest import replies
from mailsluice.ingest.auth import User
from mailsluice.ingest.auth_guard import AuthGuard
from mailsluice.metrics.ingest import Ingest as metrics

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]


class Authenticator(Protocol):
    """Checks a user's password: auth.Credentials (the users file), tenants.Accounts (both)."""

    def authenticate(self, username: str, password: str) -> User | None: ...


def split_plain(message: bytes) -> tuple[bytes, bytes, bytes] | None:
    """RFC 4616 `[authzid] NUL authcid NUL passwd`, or None when it is not that."""
    parts = message.split(b"\0")
    if len(parts) != 3 or not parts[1]:
        return None
    return parts[0], parts[1], parts[2]


class SmtpAuth:
    def __init__(
        self,
        credentials: Authenticator,
        guard: AuthGuard,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.credentials = credentials
        self.guard = guard
        self.clock = clock
        self.sleep = sleep

    async def plain(self, server: Any, args: list[str]) -> AuthResult:
        message = await _initial_or_challenge(server, args, b"")
        if message is None:
            return AuthResult(success=False, handled=True)
        parts = split_plain(message)
        if parts is None:
            await server.push(replies.S501_AUTH_SPLIT)
            return AuthResult(success=False, handled=True)
        authzid, login, password = parts
        return await self.attempt(server.conn.peer_ip, "PLAIN", login, password, authzid)

    async def login(self, server: Any, args: list[str]) -> AuthResult:
        login = await _initial_or_challenge(server, args, server.AuthLoginUsernameChallenge)
        if login is None:
            return AuthResult(success=False, handled=True)
        password = await server.challenge_auth(server.AuthLoginPasswordChallenge)
        if password is MISSING:
            return AuthResult(success=False, handled=True)
        return await self.attempt(server.conn.peer_ip, "LOGIN", login, password)

    async def attempt(
        self, ip: str, mechanism: str, login: bytes, password: bytes, authzid: bytes = b""
    ) -> AuthResult:
        try:
            name, secret = login.decode(), password.decode()
        except UnicodeDecodeError:
            name, secret = "", ""
        if self.guard.locked(ip, name, self.clock()) is not None:
            return await self.refuse_locked()
        if authzid and authzid != login:
            result, reply = "authzid_refused", replies.S535_AUTHZID
        else:
            user = await self.check(name, secret)
            # Parallel guesses all pass the first look; those that end after a lockout began
            # learn nothing, right or wrong.
            if self.guard.locked(ip, name, self.clock()) is not None:
                return await self.refuse_locked()
            if user is not None:
                metrics.AUTH_ATTEMPTS.labels("success").inc()
                return AuthResult(success=True, auth_data=user)
            result, reply = "failure", replies.S535_AUTH_INVALID
        metrics.AUTH_ATTEMPTS.labels(result).inc()
        failure = self.guard.failed(ip, name, self.clock())
        log.info("AUTH %s failed (%s) from %s", mechanism, result, ip)
        for scope in failure.locked:
            metrics.AUTH_LOCKOUTS.labels(scope).inc()
            who = ip if scope == "ip" else "username"
            log.warning("AUTH lockout of %s for %.0f s", who, self.guard.limits.lockout_s)
        await self.sleep(failure.delay_s)
        return AuthResult(success=False, handled=False, message=reply)

    async def refuse_locked(self) -> AuthResult:
        metrics.AUTH_ATTEMPTS.labels("locked").inc()
        await self.sleep(self.guard.limits.max_delay_s)
        return AuthResult(success=False, handled=False, message=replies.S454_AUTH_LOCKED)

    async def check(self, name: str, secret: str) -> User | None:
        if not name:
            return None
        return await asyncio.to_thread(self.credentials.authenticate, name, secret)


async def _initial_or_challenge(
    server: Any, args: list[str], challenge: str | bytes
) -> bytes | None:
    """The initial response of `AUTH <mech> <b64>`, or the answer to a 334 challenge; None when
    the client aborted or sent bad base64 (aiosmtpd has answered 501 then)."""
    if len(args) == 1:
        answer = await server.challenge_auth(challenge)
        return None if answer is MISSING else bytes(answer)
    try:
        return base64.b64decode(args[1].encode(), validate=True)
    except binascii.Error:
        await server.push(replies.S501_AUTH_BASE64)
        return None
