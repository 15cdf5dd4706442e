"""GCRA limiter, per-destination shaper and scheduler, with an injected clock. The shaper is the
one a worker gets without a shaping policy (support.shaping.uniform)."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError
from support.shaping import uniform

from mailsluice.delivery.shaping.limiter import Gcra, Limits, Rate
from mailsluice.delivery.shaping.scheduler import Scheduler
from mailsluice.delivery.worker.settings import DeliverySettings


def test_gcra_idle_limiter_allows_exactly_the_burst() -> None:
    g = Gcra(Rate(10.0, 1.0, 3))
    assert [g.try_acquire(0.0) for _ in range(4)] == [True, True, True, False]
    assert g.wait_time(0.0) == pytest.approx(0.1)
    assert not g.try_acquire(0.099)
    assert g.try_acquire(0.1)


def test_gcra_rate_holds_over_a_long_run() -> None:
    g = Gcra(Rate(5.0, 1.0, 2))
    sent = 0
    t = 0.0
    while t < 100.0:  # poll every millisecond for 100 s
        if g.try_acquire(t):
            sent += 1
        t += 0.001
    # 5/s over 100 s plus the initial burst credit of one extra message.
    assert 500 <= sent <= 502


def test_gcra_backlog_time_matches_real_acquisition() -> None:
    g = Gcra(Rate(10.0, 1.0, 5))
    for queued in range(20):
        probe = Gcra(Rate(10.0, 1.0, 5))
        for _ in range(queued):
            assert probe.try_acquire(probe.wait_time(0.0))
        # The next message on the probe may go exactly when the estimate said.
        assert probe.wait_time(0.0) == pytest.approx(g.backlog_time(0.0, queued), abs=1e-9)
    assert g.backlog_time(0.0, 4) == 0.0  # within the burst
    assert g.backlog_time(0.0, 5) == pytest.approx(0.1)
    assert g.backlog_time(0.0, 14) == pytest.approx(1.0)


def test_gcra_reconfigure_grants_no_burst() -> None:
    g = Gcra(Rate(1.0, 1.0, 1))
    assert g.try_acquire(0.0)
    g.configure(Rate(1.0, 1.0, 1))
    assert not g.try_acquire(0.5)


def test_gcra_unlimited_rate() -> None:
    g = Gcra(Rate(math.inf, 1.0, 1))
    assert all(g.try_acquire(0.0) for _ in range(1000))


def test_shaper_concurrency_limit_and_per_key_policy() -> None:
    shaper = uniform(3, 1000, 100, domains={"slow.example": (1, 1000, 100)})
    assert shaper.try_start("slow.example", 0.0) is not None
    assert shaper.try_start("slow.example", 0.0) is None
    assert shaper.wait_time("slow.example", 0.0) == math.inf
    assert [shaper.try_start("fast.example", 0.0) for _ in range(4)] == [""] * 3 + [None]
    shaper.finished("slow.example", "", 0.1)
    assert shaper.try_start("slow.example", 0.1) is not None
    assert shaper.active("fast.example") == 3


def test_shaper_forgets_idle_destinations() -> None:
    shaper = uniform(2, 1.0, 1)
    assert shaper.try_start("a", 0.0) is not None
    shaper.finished("a", "", 0.0)
    shaper.forget_idle(0.5)
    assert len(shaper) == 1  # rate state still matters
    shaper.forget_idle(1.5)
    assert len(shaper) == 0


def _sched(rate: float = 10.0, burst: int = 2, conc: int = 10, horizon: float = 1.0):
    return Scheduler[str](uniform(conc, rate, burst), horizon)


def test_throttled_destination_does_not_block_others() -> None:
    s = Scheduler[str](uniform(10, 10.0, 1, domains={"slow": (10, 1.0, 1)}), 5.0)
    for i in range(3):
        assert s.push("slow", f"s{i}", 0.0) is None
    for i in range(3):
        assert s.push("fast", f"f{i}", 0.0) is None
    # Everything fast goes within its burst+rate; slow gets one now.
    taken = sorted(j.item for j in s.take(0.0))
    assert taken == ["f0", "s0"]  # burst 1 each: one from each destination
    assert s.next_wake(0.0) == pytest.approx(0.1)  # fast's rate is 10/s
    assert [j.item for j in s.take(0.1)] == ["f1"]
    assert [j.item for j in s.take(0.2)] == ["f2"]
    assert s.take(0.3) == []
    assert [j.item for j in s.take(1.0)] == ["s1"]


def test_push_beyond_horizon_is_deferred_with_an_estimate() -> None:
    s = _sched(rate=1.0, burst=1, horizon=2.0)
    results = [s.push("d", str(i), 0.0) for i in range(5)]
    # 0 goes now, 1 at 1 s, 2 at 2 s: within the horizon; 3 would wait 3 s.
    assert results[:3] == [None, None, None]
    assert results[3] is not None
    assert results[3].wait == pytest.approx(3.0)
    assert results[4] is not None
    assert len(s) == 3


def test_not_yet_due_job_waits_and_far_future_is_deferred() -> None:
    s = _sched(horizon=5.0)
    assert s.push("d", "soon", 0.0, ready_at=2.0) is None
    far = s.push("d", "far", 0.0, ready_at=60.0)
    assert far is not None
    assert far.wait == pytest.approx(60.0)
    assert s.take(1.0) == []
    assert s.next_wake(1.0) == pytest.approx(1.0)
    assert [j.item for j in s.take(2.0)] == ["soon"]


def test_overdue_jobs_leave_memory_when_connections_are_stuck() -> None:
    s = _sched(rate=1000, burst=100, conc=1, horizon=1.0)
    s.push("d", "a", 0.0)
    s.push("d", "b", 0.0)
    s.push("e", "c", 0.0)
    started = s.take(0.0)
    assert sorted(j.item for j in started) == ["a", "c"]
    assert s.overdue(0.5) == []
    gone = s.overdue(1.5)
    assert [d.job.item for d in gone] == ["b"]
    assert gone[0].wait >= 1.0
    assert len(s) == 0
    for job in started:
        s.done(job, 2.0)
    assert s.shaper.active("d") == 0


def test_remove_hands_back_items() -> None:
    s = _sched()
    for i in range(4):
        s.push("d", f"p{i % 2}-{i}", 0.0)
    dropped = s.remove(lambda item: item.startswith("p0"))
    assert sorted(dropped) == ["p1-1", "p1-3"]
    assert len(s) == 2
    assert sorted(j.item for j in s) == ["p0-0", "p0-2"]


@pytest.mark.parametrize(
    "field", [{"dest_max_concurrency": 0}, {"dest_max_rate": 0.0}, {"dest_burst": 0}]
)
def test_invalid_limits_refused(field: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        DeliverySettings(**field)
    with pytest.raises(ValueError):
        Limits(connections=0)
