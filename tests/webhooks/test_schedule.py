"""The retry schedule on a simulated clock: delays, jitter, at least `retry_for_s` of retries
before a batch is dead, and the delay tier each wait goes to."""

from __future__ import annotations

import itertools

import pytest

from mailsluice.webhooks.schedule import DEFAULT_DELAYS_S, RetrySchedule, tier_for


def attempts_until_dead(schedule: RetrySchedule, rand: float = 0.0) -> list[float]:
    """Times of every attempt of a batch that always fails, the first at 0."""
    now, attempts, times = 0.0, 0, [0.0]
    while True:
        attempts += 1
        due = schedule.next_attempt(attempts, 0.0, now, rand)
        if due is None:
            return times
        now = due
        times.append(now)


def test_the_default_schedule_retries_for_at_least_a_day_then_gives_up() -> None:
    times = attempts_until_dead(RetrySchedule())
    assert times[:4] == [0, 5, 305, 2105]
    assert times[-1] >= 24 * 3600  # the last attempt comes a day or more after the first
    assert times[-2] < 24 * 3600
    assert len(times) == 9
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) == DEFAULT_DELAYS_S[-1]  # the last delay repeats


def test_jitter_stretches_a_delay_by_at_most_its_fraction() -> None:
    schedule = RetrySchedule((100,), 10_000, jitter=0.1)
    assert schedule.next_attempt(1, 0, 50, rand=0.0) == 150
    assert schedule.next_attempt(1, 0, 50, rand=0.999) == pytest.approx(159.99)


def test_short_schedules_for_tests_and_the_boundary_of_retry_for() -> None:
    schedule = RetrySchedule((0.5, 1.0), retry_for_s=3.0, jitter=0)
    assert attempts_until_dead(schedule) == [0, 0.5, 1.5, 2.5, 3.5]


@pytest.mark.parametrize("delays", [(), (0,), (5, -1)])
def test_a_schedule_needs_positive_delays(delays: tuple[float, ...]) -> None:
    with pytest.raises(ValueError):
        RetrySchedule(delays)


@pytest.mark.parametrize(
    ("delay", "tier"),
    [(0.5, "30s"), (29, "30s"), (30, "30s"), (300, "2m"), (1800, "10m"), (7200, "1h"), (1e6, "6h")],
)
def test_a_wait_goes_to_the_largest_tier_not_longer_than_it(delay: float, tier: str) -> None:
    assert tier_for(delay) == tier
