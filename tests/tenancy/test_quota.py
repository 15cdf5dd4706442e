"""QuotaBook on a simulated clock: hour and day windows, their roll-over, retry-after and the
counts other replicas report."""

from __future__ import annotations

from mailsluice.tenancy.model import Quotas
from mailsluice.tenancy.quota import DAY_S, HOUR_S, QuotaBook

DAY = 20_000 * DAY_S  # a UTC midnight
HOURLY = Quotas(per_hour=10, per_day=None)


def test_admits_up_to_the_hourly_quota_then_says_when() -> None:
    book = QuotaBook()
    now = DAY + 5 * HOUR_S + 600  # 05:10
    assert book.admit("acme", HOURLY, 10, now) is None
    book.charge("acme", 8, now)
    assert book.admit("acme", HOURLY, 2, now) is None
    over = book.admit("acme", HOURLY, 3, now)
    assert over is not None
    assert (over.window, over.limit, over.used, over.retry_after_s) == ("hour", 10, 8, 3000)
    assert not over.never_fits
    assert book.admit("globex", HOURLY, 10, now) is None  # per tenant


def test_the_hour_rolls_over() -> None:
    book = QuotaBook()
    book.charge("acme", 10, DAY + HOUR_S - 1)
    assert book.admit("acme", HOURLY, 1, DAY + HOUR_S - 1) is not None
    over = book.admit("acme", HOURLY, 1, DAY + HOUR_S - 0.5)
    assert over is not None and over.retry_after_s == 1  # never 0: "try again now" would spin
    assert book.admit("acme", HOURLY, 1, DAY + HOUR_S) is None


def test_the_day_window_and_the_longer_wait_wins() -> None:
    quotas = Quotas(per_hour=10, per_day=15)
    book = QuotaBook()
    book.charge("acme", 10, DAY + 100)
    over = book.admit("acme", quotas, 1, DAY + 200)
    assert over is not None and over.window == "hour"
    book.charge("acme", 5, DAY + HOUR_S + 100)  # the next hour: 15 today
    over = book.admit("acme", quotas, 1, DAY + HOUR_S + 200)
    assert over is not None and over.window == "day" and over.used == 15
    assert over.retry_after_s == DAY_S - HOUR_S - 200
    # both full: the day decides when to come back, not the hour
    book.charge("acme", 10, DAY + 2 * HOUR_S)
    over = book.admit("acme", quotas, 1, DAY + 2 * HOUR_S + 1)
    assert over is not None and over.window == "day"
    assert book.admit("acme", quotas, 10, DAY + DAY_S) is None  # a new UTC day


def test_more_than_a_window_holds_never_fits() -> None:
    over = QuotaBook().admit("acme", HOURLY, 11, DAY)
    assert over is not None and over.never_fits and over.used == 0


def test_no_quota_no_limit() -> None:
    book = QuotaBook()
    book.charge("acme", 10**9, DAY)
    assert book.admit("acme", Quotas(), 10**9, DAY) is None


def test_remote_counts_add_and_replace() -> None:
    book = QuotaBook()
    now = DAY + 10
    book.charge("acme", 3, now)
    book.add_remote("ingest-b", "acme", "hour", DAY, 4)
    book.add_remote("api-a", "acme", "hour", DAY, 2)
    assert book.used("acme", "hour", DAY) == 9
    book.add_remote("ingest-b", "acme", "hour", DAY, 5)  # its latest count, not an increment
    assert book.used("acme", "hour", DAY) == 10
    over = book.admit("acme", HOURLY, 1, now)
    assert over is not None and over.used == 10
    assert book.used("acme", "day", DAY) == 3  # windows are apart


def test_own_reports_only_the_current_windows_and_old_ones_are_forgotten() -> None:
    book = QuotaBook()
    book.charge("acme", 2, DAY + 10)
    assert book.own(DAY + 20) == {("acme", "hour", DAY): 2, ("acme", "day", DAY): 2}
    book.charge("acme", 1, DAY + HOUR_S)
    assert book.own(DAY + HOUR_S) == {
        ("acme", "hour", DAY + HOUR_S): 1,
        ("acme", "day", DAY): 3,
    }
    book.add_remote("b", "acme", "day", DAY, 7)
    book.forget(DAY + 2 * DAY_S)
    assert book.used("acme", "day", DAY) == 0 and book.own(DAY + 2 * DAY_S) == {}
