"""GCRA and the per-destination limiter set, with a simulated clock."""

from __future__ import annotations

import math

import pytest

from mailsluice.delivery.shaping.limiter import (
    DestinationLimiter,
    Gcra,
    Limits,
    Rate,
)


def greedy_send_times(acquire, wait, start: float, end: float) -> list[float]:
    """A sender that always has mail: sends whenever allowed, sleeps exactly the wait."""
    now, sent = start, []
    while now < end:
        if acquire(now):
            sent.append(now)
            continue
        w = wait(now)
        assert 0 < w < math.inf
        now += w
    return sent


def worst_window(times: list[float], window: float) -> int:
    """Most sends in any half-open window of `window` seconds."""
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - window + 1e-7:
            j += 1
        best = max(best, i - j + 1)
    return best


@pytest.mark.parametrize(
    ("per_minute", "burst", "minutes"),
    [(60, 1, 10), (600, 10, 5), (7, 1, 30), (6000, 50, 3), (1, 1, 120)],
)
def test_gcra_rate_over_simulated_minutes_within_one_percent(per_minute, burst, minutes):
    gcra = Gcra(Rate(per_minute, 60, burst))
    times = greedy_send_times(gcra.try_acquire, gcra.wait_time, 1000.0, 1000.0 + minutes * 60)
    expected = per_minute * minutes
    # The initial burst adds at most burst-1 messages on top of the steady rate.
    assert abs(len(times) - expected) <= max(expected * 0.01, burst)
    steady = [t for t in times if t >= 1000.0 + 60]
    achieved = len(steady) / ((minutes - 1) * 60) * 60
    assert achieved == pytest.approx(per_minute, rel=0.01)


@pytest.mark.parametrize(("per_second", "burst"), [(10, 1), (10, 5), (100, 10), (0.5, 3)])
def test_gcra_worst_burst_equals_stated_burst(per_second, burst):
    gcra = Gcra(Rate(per_second, 1, burst))
    times = greedy_send_times(gcra.try_acquire, gcra.wait_time, 0.0, 200.0 / per_second)
    # back to back = at the same instant
    same_instant = max(times.count(t) for t in set(times))
    assert same_instant == burst
    # and no window of one emission interval ever holds more than the burst
    assert worst_window(times, 1.0 / per_second) <= burst


def test_gcra_idle_recovers_burst_but_never_more():
    gcra = Gcra(Rate(1, 1, 3))
    assert [gcra.try_acquire(0.0) for _ in range(4)] == [True, True, True, False]
    # long idle: exactly 3 again, not more
    assert [gcra.try_acquire(100.0) for _ in range(4)] == [True, True, True, False]
    assert gcra.wait_time(100.0) == pytest.approx(1.0)


def test_gcra_configure_keeps_state_no_burst_from_change():
    gcra = Gcra(Rate(10, 1, 5))
    for _ in range(5):
        assert gcra.try_acquire(0.0)
    gcra.configure(Rate(100, 1, 5))  # faster, but the used credit stays used
    assert not gcra.try_acquire(0.0)
    assert gcra.wait_time(0.0) > 0


def test_gcra_primed_starts_at_steady_rate():
    gcra = Gcra(Rate(10, 1, 10), now=50.0)
    assert gcra.try_acquire(50.0)
    assert not gcra.try_acquire(50.0)
    assert gcra.wait_time(50.0) == pytest.approx(0.1)


def test_gcra_backlog_time():
    gcra = Gcra(Rate(2, 1, 1))
    assert gcra.backlog_time(0.0, 0) == 0.0
    assert gcra.backlog_time(0.0, 4) == pytest.approx(2.0)


def test_rate_validation_and_scaling():
    with pytest.raises(ValueError):
        Rate(0, 1)
    with pytest.raises(ValueError):
        Rate(1, 1, 0)
    r = Rate(100, 60, 10).scaled(0.1)
    assert r.per_second == pytest.approx(10 / 60)
    assert r.burst == 1


def test_destination_limiter_concurrency_and_release():
    dest = DestinationLimiter.create(Limits(connections=2, message_rates=(Rate(1000, 1, 100),)))
    assert dest.try_acquire(0.0)
    assert dest.try_acquire(0.0)
    assert dest.wait_time(0.0) == math.inf
    assert not dest.try_acquire(0.0)
    dest.release()
    assert dest.try_acquire(0.0)
    assert dest.active == 2


def test_destination_limiter_all_rates_must_allow():
    # 10/s but also only 20 per minute (burst 20): the per-minute limit binds after 20
    limits = Limits(100, (Rate(10, 1, 10), Rate(20, 60, 20)))
    dest = DestinationLimiter.create(limits)
    times = []
    now = 0.0
    while now < 120:
        if dest.try_acquire(now):
            dest.release()
            times.append(now)
        else:
            now += dest.wait_time(now)
    # GCRA bound: a window of w seconds holds at most burst + w * rate - 1 (here 10 + 10 - 1)
    assert max(times.count(t) for t in set(times)) == 10
    assert worst_window(times, 1.0) <= 19
    assert len([t for t in times if 60 <= t < 120]) == pytest.approx(20, abs=1)


def test_destination_connection_rate():
    dest = DestinationLimiter.create(Limits(10, (), Rate(2, 60, 1)))
    assert dest.try_connect(0.0)
    assert not dest.try_connect(1.0)
    assert dest.connect_wait(1.0) == pytest.approx(29.0)
    assert dest.current_rate() == math.inf
