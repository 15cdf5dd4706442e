"""A warming destination spends its cap on the most engaged first (simulated clock): its queue
ranks ready jobs by grade within each class, a better job displaces the worst queued one when
the cap is full, and a new queue gathers before its first start; a destination not rationed by
a warm-up cap keeps arrival order."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Literal

from support.shaping import uniform

from mailsluice.contracts.envelope import Envelope, envelope_from_headers
from mailsluice.delivery.shaping.engine import PolicyShaper
from mailsluice.delivery.shaping.scheduler import Deferral, Scheduler
from mailsluice.delivery.shaping.warmup import PoolWarmup, WarmupTracker
from mailsluice.delivery.worker import outcomes
from mailsluice.delivery.worker.outcomes import overflow_record
from mailsluice.policy.shaping import load_policy_text
from mailsluice.policy.warmup import Plan, Schedule

POLICY = """
[defaults]
connection_limit = 100
max_message_rate = "6000/s"
max_deliveries_per_connection = 100
max_recipients_per_transaction = 100
tls = "opportunistic"
"""
NOON = datetime(2026, 11, 2, 12, 0, tzinfo=UTC).timestamp()
# bulk "b<grade>-<n>", transactional "tx<grade>-<n>"
GRADES = [1, 4, 0, 3, 1, 4, 2, 0]


def grade(item: str) -> int:
    return int(item.lstrip("btx").split("-")[0])


def tx(item: str) -> bool:
    return item.startswith("tx")


def warming(
    cap: int | None, over_cap: Literal["defer", "overflow"] = "defer", start: date | None = None
) -> PolicyShaper:
    """A pool on day 1 of a daily cap of `cap` (None: its warm-up is complete)."""
    day1 = datetime.fromtimestamp(NOON, UTC).date()
    table = (cap,) if cap is not None else (1,)
    plan = Plan(start or day1, {"*": Schedule("day", table)}, over_cap, "shared")
    tracker = WarmupTracker("newip", plan)
    return PolicyShaper(
        load_policy_text(POLICY),
        "newip",
        adaptive=False,
        warmup=PoolWarmup.single(tracker),
        wall=lambda: NOON,
    )


def sched(shaper: PolicyShaper, gather: float = 0.0) -> Scheduler[str]:
    return Scheduler(shaper, 5.0, urgent=tx, rank=grade, gather=gather)


def run(s: Scheduler[str], until: float, step: float = 0.01) -> list[str]:
    out, now = [], 0.0
    while now <= until + 1e-9:
        for job in s.take(now):
            out.append(job.item)
            s.done(job, now)
        now += step
    return out


def backlog(s: Scheduler[str], at: float = 0.0) -> list[Deferral[str]]:
    pushed = [s.push("d.example", f"b{g}-{n}", at) for n, g in enumerate(GRADES)]
    return [d for d in pushed if d is not None]


def test_a_warming_destination_sends_the_highest_grades_of_its_backlog() -> None:
    s = sched(warming(3))
    held = backlog(s)
    assert run(s, 1.0) == ["b4-1", "b4-5", "b3-3"]
    # the rest waits for tomorrow, each held for the warm-up once
    assert sorted(d.job.item for d in held) == ["b0-2", "b0-7", "b1-0", "b1-4", "b2-6"]
    assert {d.held for d in held} == {"warmup"}
    assert len(s) == 0


def test_equal_grades_keep_arrival_order_and_never_displace_each_other() -> None:
    s = sched(warming(2))
    assert s.push("d.example", "b2-0", 0.0) is None
    assert s.push("d.example", "b2-1", 0.0) is None
    later = s.push("d.example", "b2-2", 0.0)
    assert later is not None and later.job.item == "b2-2"
    assert run(s, 1.0) == ["b2-0", "b2-1"]


def test_the_displaced_overflow_to_the_warm_pool() -> None:
    s = sched(warming(3, over_cap="overflow"))
    moved = backlog(s)
    assert {d.overflow_pool for d in moved} == {"shared"}
    assert run(s, 1.0) == ["b4-1", "b4-5", "b3-3"]


def test_a_destination_not_warming_keeps_arrival_order() -> None:
    for shaper in (uniform(conc=100, rate=1e6, burst=100), warming(None, start=date(2026, 1, 1))):
        s = sched(shaper)
        assert backlog(s) == []
        assert run(s, 1.0) == [f"b{g}-{n}" for n, g in enumerate(GRADES)]


def test_transactional_still_goes_before_bulk_of_any_grade() -> None:
    s = sched(warming(3))
    s.push("d.example", "b4-0", 0.0)
    s.push("d.example", "b3-1", 0.0)
    s.push("d.example", "tx0-2", 0.0)
    s.push("d.example", "tx1-3", 0.0)
    assert run(s, 1.0) == ["tx1-3", "tx0-2", "b4-0"]


def test_a_new_warming_queue_gathers_its_backlog_before_the_first_send() -> None:
    s = sched(warming(2), gather=1.0)
    s.push("d.example", "b1-0", 0.0)
    assert s.take(0.0) == [] and s.next_wake(0.0) == 1.0
    s.push("d.example", "b3-1", 0.4)  # the next fetch of the same partition
    s.push("d.example", "b2-2", 0.8)
    assert s.take(0.99) == []
    assert [j.item for j in s.take(1.0)] == ["b3-1", "b2-2"]
    # a destination not warming starts at once
    plain = Scheduler(uniform(conc=100, rate=1e6, burst=100), 5.0, rank=grade, gather=1.0)
    plain.push("d.example", "b1-0", 0.0)
    assert [j.item for j in plain.take(0.0)] == ["b1-0"]


def test_held_and_moved_records_keep_their_grade() -> None:
    env = Envelope(
        queue_id="q1",
        pool="newip",
        sender="s@origin.example",
        recipients=("r@d.example",),
        routing_key="d.example",
        received_at=NOON,
        grade=3,
    )
    for record in (
        outcomes.plan_throttled(env, b"m", now=NOON, not_before=NOON + 3600, held="warmup"),
        overflow_record(env, b"m", "shared"),
    ):
        assert envelope_from_headers(record.headers).grade == 3


def test_a_busy_queue_keeps_its_displacement_heap_bounded() -> None:
    s = Scheduler(uniform(conc=1, rate=1e6, burst=100), 5.0, rank=grade)
    now = 0.0
    s.push("d.example", "b0-first", now)
    for n in range(2000):  # never empty: one queued behind each send
        s.push("d.example", f"b0-{n}", now)
        [job] = s.take(now)
        s.done(job, now)
        now += 0.001
    q = s._queues["d.example"]
    assert len(q) == 1 and len(q.normal.worst) <= 2 * 1 + 64 + 1
