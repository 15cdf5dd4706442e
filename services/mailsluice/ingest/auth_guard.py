"""AUTH abuse: a growing delay before each failed AUTH's reply, and a lockout per client IP and
per username after too many failures within a window. Plain decisions over plain state with the
time passed in; no sockets, no aiosmtpd (smtp_auth.py applies them).

- Each failure is counted for the client IP and for the username. The delay before its 535 is
  `delay_s * 2^(n-1)` for the n-th failure of the worse of the two within the window, capped at
  `max_delay_s`; the reply waits, the event loop does not.
- `max_failures_ip` (or `max_failures_user`) failures within `window_s` lock that IP (username)
  for `lockout_s`: every AUTH from it (for it) gets 454 4.7.0, the right password too, without a
  password check. At the end of the lockout its count starts from zero.
- A success resets nothing: an attacker holding one account must not be able to wipe the count
  of the IP it guesses other accounts from, nor a user's own logins that of a guessed user.
- The state lives in memory, per ingest process, bounded to `max_entries` keys (the least
  recently failed are forgotten first): with N replicas an attacker gets up to N times the
  budget, and a restart forgets.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Literal

Scope = Literal["ip", "user"]
_KEEP = 64  # failure times kept per key at least


@dataclass(frozen=True)
class GuardLimits:
    delay_s: float = 1.0
    max_delay_s: float = 8.0
    max_failures_ip: int = 10  # 0: no lockout per IP
    max_failures_user: int = 20  # 0: no lockout per username
    window_s: float = 600.0
    lockout_s: float = 600.0
    max_entries: int = 100_000


@dataclass
class _Record:
    failures: list[float] = field(default_factory=list)  # times within the window
    locked_until: float = 0.0


@dataclass(frozen=True)
class Failure:
    """What a failed AUTH leads to: wait `delay_s` before the 535; `locked` names the scopes
    this failure has just locked."""

    delay_s: float
    locked: tuple[Scope, ...] = ()


class AuthGuard:
    def __init__(self, limits: GuardLimits) -> None:
        self.limits = limits
        self._records: OrderedDict[tuple[Scope, str], _Record] = OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    def _max(self, scope: Scope) -> int:
        return self.limits.max_failures_ip if scope == "ip" else self.limits.max_failures_user

    def _current(self, key: tuple[Scope, str], now: float) -> _Record | None:
        """The record of a key with failures older than the window and a past lockout gone."""
        record = self._records.get(key)
        if record is None:
            return None
        if record.locked_until and record.locked_until <= now:
            record.locked_until = 0.0
            record.failures.clear()
        horizon = now - self.limits.window_s
        record.failures = [t for t in record.failures if t > horizon]
        if not record.failures and not record.locked_until:
            del self._records[key]
            return None
        return record

    def locked(self, ip: str, username: str, now: float) -> Scope | None:
        """The scope that is locked out now for this IP or username, if any."""
        for scope, name in _keys(ip, username):
            record = self._current((scope, name), now)
            if record is not None and record.locked_until > now:
                return scope
        return None

    def failed(self, ip: str, username: str, now: float) -> Failure:
        """Count a failure; how long to wait before answering, and what it locked."""
        worst, locked = 0, []
        for key in _keys(ip, username):
            record = self._current(key, now) or _Record()
            record.failures.append(now)
            # Only the count up to the limit (or where the delay stops growing) matters.
            del record.failures[: -max(self._max(key[0]), _KEEP)]
            self._records[key] = record
            self._records.move_to_end(key)
            worst = max(worst, len(record.failures))
            limit = self._max(key[0])
            if limit and len(record.failures) >= limit and not record.locked_until:
                record.locked_until = now + self.limits.lockout_s
                locked.append(key[0])
        while len(self._records) > self.limits.max_entries:
            self._records.popitem(last=False)
        return Failure(failure_delay(worst, self.limits), tuple(locked))


def _keys(ip: str, username: str) -> tuple[tuple[Scope, str], ...]:
    return (("ip", ip), ("user", username))


def failure_delay(failures: int, limits: GuardLimits) -> float:
    """The wait before the reply to the n-th failure within the window."""
    if failures <= 0 or limits.delay_s <= 0:
        return 0.0
    return float(min(limits.delay_s * 2 ** min(failures - 1, 32), limits.max_delay_s))
