"""The scheduler's per-destination ordering, with an injected clock: any ready message may start
(no head-of-line blocking by a message due later), transactional mail keeps the first claim on a
destination's rate, overdue jobs leave in arrival order, and deferrals say where to overflow."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from support.shaping import uniform

from mailsluice.delivery.shaping.engine import PolicyShaper
from mailsluice.delivery.shaping.scheduler import Scheduler
from mailsluice.delivery.shaping.warmup import PoolWarmup, WarmupTracker
from mailsluice.policy.shaping import load_policy_text
from mailsluice.policy.warmup import Plan, Schedule


def tx(item: str) -> bool:
    return item.startswith("tx")


def sched(rate: float = 1e6, conc: int = 100, burst: int = 100, horizon: float = 30.0):
    """Rate 1e6/s with a burst of 100: no rate limit at the test's steps (10 ms)."""
    return Scheduler(uniform(conc, rate, burst), horizon, urgent=tx)


def run(s: Scheduler, until: float, step: float = 0.01) -> list[tuple[float, str]]:
    """Start whatever may start at each step (each send ends at once)."""
    out = []
    now = 0.0
    while now <= until + 1e-9:
        for job in s.take(now):
            out.append((round(now, 2), job.item))
            s.done(job, now)
        now += step
    return out


def test_a_retry_due_later_does_not_block_ready_messages_behind_it() -> None:
    s = sched()
    assert s.push("d.example", "retry", 0.0, ready_at=10.0) is None
    for n in range(3):
        assert s.push("d.example", f"new{n}", 0.0) is None
    started = s.take(0.0)
    assert [j.item for j in started] == ["new0", "new1", "new2"]
    assert s.queued("d.example") == 1
    assert s.take(9.99) == []
    assert [j.item for j in s.take(10.0)] == ["retry"]
    assert len(s) == 0 and s.keys() == []


def test_ready_messages_start_by_ready_time_then_arrival() -> None:
    s = sched()
    s.push("d", "late", 0.0, ready_at=3.0)
    s.push("d", "early", 0.0, ready_at=1.0)
    s.push("d", "now-a", 0.0)
    s.push("d", "now-b", 0.0)
    s.push("d", "mid", 0.0, ready_at=2.0)
    assert [item for _, item in run(s, 4.0)] == ["now-a", "now-b", "early", "mid", "late"]


def test_next_wake_is_the_earliest_ready_time_not_the_head() -> None:
    s = sched()
    s.push("d", "later", 0.0, ready_at=20.0)
    s.push("d", "sooner", 0.0, ready_at=4.0)
    assert s.next_wake(0.0) == pytest.approx(4.0)
    assert [j.item for j in s.take(4.0)] == ["sooner"]
    assert s.next_wake(4.0) == pytest.approx(16.0)


def test_transactional_keeps_first_claim_on_the_rate() -> None:
    s = sched(rate=2.0, burst=1)  # one every 0.5 s
    for n in range(4):
        s.push("d", f"bulk{n}", 0.0)
    s.push("d", "tx-later", 0.0, ready_at=0.7)
    s.push("d", "tx-now", 0.0)
    order = run(s, 3.0)
    items = [item for _, item in order]
    # the ready transactional message goes first; the later one as soon as it is ready and the
    # rate allows (1.0), before the bulk messages queued ahead of it
    assert items[:3] == ["tx-now", "bulk0", "tx-later"]
    assert items[3:] == ["bulk1", "bulk2", "bulk3"]
    times = [t for t, _ in order]
    assert times == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]


def test_a_transactional_head_not_yet_ready_does_not_block_bulk() -> None:
    s = sched()
    s.push("d", "tx-retry", 0.0, ready_at=5.0)
    s.push("d", "bulk", 0.0)
    assert [j.item for j in s.take(0.0)] == ["bulk"]


def test_concurrency_limit_still_holds_with_many_ready() -> None:
    s = sched(conc=2)
    for n in range(5):
        s.push("d", f"m{n}", 0.0)
    first = s.take(0.0)
    assert [j.item for j in first] == ["m0", "m1"]
    assert s.take(0.1) == []
    s.done(first[0], 0.2)
    assert [j.item for j in s.take(0.2)] == ["m2"]


def test_overdue_leaves_in_arrival_order_and_skips_started_jobs() -> None:
    s = sched(conc=1, horizon=5.0)
    s.push("d", "a", 0.0)
    s.push("d", "b", 1.0, ready_at=1.0)
    s.push("d", "c", 2.0, ready_at=2.0)
    [job] = s.take(0.0)  # "a" holds the only connection from here on
    assert job.item == "a"
    assert s.overdue(5.5) == []
    assert [d.job.item for d in s.overdue(6.5)] == ["b"]
    assert [d.job.item for d in s.overdue(7.5)] == ["c"]
    assert len(s) == 0 and s.keys() == []


def test_remove_and_iteration_keep_the_count() -> None:
    s = sched(conc=1)
    for n in range(6):
        s.push(f"d{n % 2}", f"m{n}", 0.0, ready_at=float(n))
    assert sorted(j.item for j in s) == [f"m{n}" for n in range(6)]
    dropped = s.remove(lambda item: item not in ("m1", "m2"))
    assert sorted(dropped) == ["m1", "m2"]
    assert len(s) == 4
    assert s.queued("d0") == 2 and s.queued("d1") == 2
    assert [j.item for j in s.take(10.0)] == ["m0", "m3"]  # one connection per destination
    assert len(s) == 2


POLICY = """
[defaults]
connection_limit = 10
max_message_rate = "6000/s"
max_deliveries_per_connection = 100
max_recipients_per_transaction = 100
tls = "opportunistic"
"""


def overflow_shaper(cap: int, clock: list[float]) -> PolicyShaper:
    start = datetime.fromtimestamp(clock[0], UTC).date()
    plan = Plan(start, {"*": Schedule("day", (cap,))}, "overflow", "shared")
    policy = load_policy_text(POLICY)
    tracker = WarmupTracker("newip", plan)
    return PolicyShaper(
        policy, "newip", adaptive=False, warmup=PoolWarmup.single(tracker), wall=lambda: clock[0]
    )


def test_deferral_over_the_warmup_cap_names_the_overflow_pool() -> None:
    clock = [datetime(2026, 11, 2, 10, 0, tzinfo=UTC).timestamp()]
    shaper = overflow_shaper(3, clock)
    s: Scheduler[str] = Scheduler(shaper, 5.0)
    pushed = [s.push("d.example", f"m{n}", 0.0) for n in range(5)]
    assert pushed[:3] == [None, None, None]  # within today's cap: queued
    assert [d.overflow_pool for d in pushed[3:] if d is not None] == ["shared", "shared"]
    assert [item for _, item in run(s, 0.5)] == ["m0", "m1", "m2"]
    later = s.push("d.example", "m5", 1.0)
    assert later is not None and later.overflow_pool == "shared"


def test_no_overflow_pool_when_the_wait_is_not_the_warmup() -> None:
    clock = [datetime(2026, 11, 2, 10, 0, tzinfo=UTC).timestamp()]
    shaper = overflow_shaper(100, clock)
    s: Scheduler[str] = Scheduler(shaper, 5.0)
    d = s.push("d.example", "retry", 0.0, ready_at=60.0)  # due later, cap not reached
    assert d is not None and d.overflow_pool == ""
    plain = sched(horizon=1.0).push("d", "retry", 0.0, ready_at=60.0)
    assert plain is not None and plain.overflow_pool == ""
    shaper.warmup_ready = False  # usage unknown until restored: never overflow blindly
    assert shaper.overflow_pool("d.example", 0.0, 500) == ""


def test_overflow_stops_at_the_next_day() -> None:
    clock = [datetime(2026, 11, 2, 23, 59, tzinfo=UTC).timestamp()]
    shaper = overflow_shaper(1, clock)
    assert shaper.try_start("d.example", 0.0) is not None
    shaper.finished("d.example", "", 0.0)
    assert shaper.overflow_pool("d.example", 0.0, 0) == "shared"
    clock[0] += 120  # the next UTC day: a fresh cap
    assert shaper.overflow_pool("d.example", 1.0, 0) == ""
