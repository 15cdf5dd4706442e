"""The AUTH abuse guard (ingest/auth_guard.py) on a simulated clock, and the PLAIN / LOGIN
attempts of smtp_auth.py with that clock and a recording sleep (no sockets)."""

from __future__ import annotations

from typing import Any

import pytest

from mailsluice.ingest import replies
from mailsluice.ingest.auth import Credentials, hash_password
from mailsluice.ingest.auth_guard import AuthGuard, GuardLimits, failure_delay
from mailsluice.ingest.smtp_auth import SmtpAuth, split_plain

LIMITS = GuardLimits(
    delay_s=1.0,
    max_delay_s=8.0,
    max_failures_ip=5,
    max_failures_user=8,
    window_s=600.0,
    lockout_s=300.0,
)


def test_the_delay_doubles_and_is_capped() -> None:
    assert [failure_delay(n, LIMITS) for n in range(7)] == [0, 1, 2, 4, 8, 8, 8]
    assert failure_delay(10**6, LIMITS) == 8.0  # no overflow
    assert failure_delay(3, GuardLimits(delay_s=0.0)) == 0.0


def test_the_delay_follows_the_worse_of_ip_and_user() -> None:
    guard = AuthGuard(LIMITS)
    for n in range(3):
        guard.failed(f"192.0.2.{n}", "app", now=float(n))
    # A fresh IP, but the user's 4th failure.
    assert guard.failed("198.51.100.1", "app", now=3.0).delay_s == 8.0


def test_n_failures_within_the_window_lock_the_ip_for_the_lockout() -> None:
    guard = AuthGuard(LIMITS)
    for n in range(4):
        assert guard.failed("192.0.2.1", f"user{n}", now=10.0 * n).locked == ()
    assert guard.locked("192.0.2.1", "someone", now=40.0) is None
    assert guard.failed("192.0.2.1", "user4", now=40.0).locked == ("ip",)
    assert guard.locked("192.0.2.1", "someone", now=40.0) == "ip"
    assert guard.locked("192.0.2.1", "someone", now=339.9) == "ip"
    assert guard.locked("192.0.2.2", "someone", now=41.0) is None  # only that IP
    assert guard.locked("192.0.2.1", "someone", now=340.0) is None  # unlocked
    # Counting starts again: one more failure does not lock.
    assert guard.failed("192.0.2.1", "user5", now=341.0).locked == ()
    assert guard.locked("192.0.2.1", "someone", now=341.0) is None


def test_failures_older_than_the_window_do_not_count() -> None:
    guard = AuthGuard(LIMITS)
    for n in range(4):
        guard.failed("192.0.2.1", "app", now=100.0 * n)  # 0, 100, 200, 300
    # At 750 the failures at 0 and 100 are out of the window: 3 in it with this one.
    failure = guard.failed("192.0.2.1", "app", now=750.0)
    assert failure.locked == () and failure.delay_s == 4.0


def test_failures_from_many_ips_lock_the_username() -> None:
    guard = AuthGuard(LIMITS)
    locked = [guard.failed(f"192.0.2.{n}", "victim", now=float(n)).locked for n in range(8)]
    assert locked[-1] == ("user",) and not any(locked[:-1])
    assert guard.locked("203.0.113.9", "victim", now=9.0) == "user"
    assert guard.locked("203.0.113.9", "other", now=9.0) is None


def test_zero_turns_a_lockout_off() -> None:
    guard = AuthGuard(GuardLimits(max_failures_ip=0, max_failures_user=0))
    for n in range(100):
        assert guard.failed("192.0.2.1", "app", now=float(n)).locked == ()
    assert guard.locked("192.0.2.1", "app", now=100.0) is None


def test_state_is_bounded_and_forgets_what_expired() -> None:
    guard = AuthGuard(GuardLimits(max_entries=10, window_s=60.0, lockout_s=60.0))
    for n in range(50):
        guard.failed(f"192.0.2.{n}", f"user{n}", now=0.0)
    assert len(guard) == 10
    guard.locked("192.0.2.49", "user49", now=61.0)
    assert len(guard) == 8  # the two keys asked about had expired


# --- attempts -----------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def auth(tmp_path: Any) -> tuple[SmtpAuth, Clock]:
    users = tmp_path / "users.yaml"
    secret = hash_password("secret", scheme="pbkdf2_sha256")
    users.write_text(f"users:\n  app:\n    password: '{secret}'\n")
    clock = Clock()
    guard = AuthGuard(GuardLimits(delay_s=0.5, max_delay_s=2.0, max_failures_ip=3))
    return SmtpAuth(Credentials(str(users)), guard, clock=clock, sleep=clock.sleep), clock


async def test_wrong_passwords_wait_then_lock_out_even_the_right_one(
    auth: tuple[SmtpAuth, Clock],
) -> None:
    smtp_auth, clock = auth
    results = [await smtp_auth.attempt("192.0.2.1", "PLAIN", b"app", b"bad") for _ in range(3)]
    assert [r.message for r in results] == [replies.S535_AUTH_INVALID] * 3
    assert clock.slept == [0.5, 1.0, 2.0]
    result = await smtp_auth.attempt("192.0.2.1", "PLAIN", b"app", b"secret")
    assert (result.success, result.message) == (False, replies.S454_AUTH_LOCKED)
    assert clock.slept[-1] == 2.0  # a locked-out client waits the longest delay too
    other = await smtp_auth.attempt("192.0.2.2", "PLAIN", b"app", b"secret")
    assert other.success and other.auth_data.name == "app"


async def test_an_authzid_other_than_the_user_is_a_failure(auth: tuple[SmtpAuth, Clock]) -> None:
    smtp_auth, clock = auth
    result = await smtp_auth.attempt("192.0.2.1", "PLAIN", b"app", b"secret", b"admin")
    assert (result.success, result.message) == (False, replies.S535_AUTHZID)
    assert clock.slept == [0.5]
    assert (await smtp_auth.attempt("192.0.2.1", "PLAIN", b"app", b"secret", b"app")).success


async def test_undecodable_credentials_fail(auth: tuple[SmtpAuth, Clock]) -> None:
    smtp_auth, _ = auth
    result = await smtp_auth.attempt("192.0.2.1", "LOGIN", b"\xff", b"secret")
    assert result.message == replies.S535_AUTH_INVALID


@pytest.mark.parametrize(
    ("message", "parts"),
    [
        (b"\0app\0pw", (b"", b"app", b"pw")),
        (b"z\0app\0pw", (b"z", b"app", b"pw")),
        (b"\0app\0", (b"", b"app", b"")),
        (b"app\0pw", None),
        (b"\0\0pw", None),
        (b"a\0b\0c\0d", None),
    ],
)
def test_split_plain(message: bytes, parts: tuple[bytes, bytes, bytes] | None) -> None:
    assert split_plain(message) == parts


def test_a_key_keeps_a_bounded_number_of_failure_times() -> None:
    guard = AuthGuard(GuardLimits(max_failures_ip=0, max_failures_user=0, window_s=1e6))
    for n in range(1000):
        guard.failed("192.0.2.1", "app", now=float(n))
    assert all(len(record.failures) <= 64 for record in guard._records.values())
    assert guard.failed("192.0.2.1", "app", now=1000.0).delay_s == GuardLimits().max_delay_s


async def test_a_guess_that_ends_after_a_lockout_began_learns_nothing(
    auth: tuple[SmtpAuth, Clock],
) -> None:
    smtp_auth, _ = auth
    real_check = smtp_auth.check

    async def check_while_others_fail(name: str, secret: str) -> Any:
        user = await real_check(name, secret)
        for _ in range(3):  # parallel wrong guesses end first and lock the IP out
            smtp_auth.guard.failed("192.0.2.1", "app", smtp_auth.clock())
        return user

    smtp_auth.check = check_while_others_fail  # type: ignore[method-assign]
    result = await smtp_auth.attempt("192.0.2.1", "PLAIN", b"app", b"secret")
    assert (result.success, result.message) == (False, replies.S454_AUTH_LOCKED)
