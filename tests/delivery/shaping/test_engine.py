"""The shaping engine inside the worker's scheduler, with a simulated clock: policy rates hold,
throttled / suspended / over-cap destinations leave memory, others run at full speed."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from mailsluice.delivery.shaping.engine import PolicyShaper
from mailsluice.delivery.shaping.scheduler import Scheduler
from mailsluice.delivery.shaping.warmup import PoolWarmup, WarmupTracker
from mailsluice.policy.shaping import load_policy_text
from mailsluice.policy.warmup import Plan
from mailsluice.policy.warmup_config import WarmupConfig

POLICY = """
[defaults]
connection_limit = 10
max_message_rate = "6000/min"
max_deliveries_per_connection = 100
max_recipients_per_transaction = 100
tls = "opportunistic"

[provider.slow]
domains = ["slow.example"]
max_message_rate = "120/min,burst=1"

[provider.google]
mx_suffixes = ["google.com"]
max_message_rate = "600/min"
connection_limit = 5

[provider.big]
max_message_rate = "1200/min"
shards = 4
"""


class Clock:
    def __init__(self, start: float = 1_000_000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t


def simulate(shaper, keys, seconds, *, step=0.01, horizon=5.0, backlog=50):
    """Keep `backlog` messages per key in memory or on their way back from a delay topic;
    start whatever the scheduler allows; each send takes one step; a deferred message comes
    back at its slot. Returns (starts per key, deferrals per key)."""
    sched = Scheduler(shaper, horizon)
    starts = {k: [] for k in keys}
    deferred = {k: 0 for k in keys}
    away = {k: [] for k in keys}  # slots of deferred messages
    now = 0.0
    running = []

    def defer(d):
        if d is not None:
            deferred[d.job.key] += 1
            away[d.job.key].append(now + d.wait)

    while now < seconds:
        for key in keys:
            for slot in [t for t in away[key] if t - horizon / 2 <= now]:
                away[key].remove(slot)
                defer(sched.push(key, object(), now, slot, slotted=True))
            while sched.queued(key) + len(away[key]) < backlog:
                defer(sched.push(key, object(), now))
        for job in running:
            sched.done(job, now)
        running = sched.take(now)
        for job in running:
            starts[job.key].append(now)
        for d in sched.overdue(now):
            defer(d)
        now += step
    return starts, deferred


def test_policy_rate_holds_within_one_percent_and_others_run_free():
    shaper = PolicyShaper(load_policy_text(POLICY), "default", adaptive=False)
    starts, deferred = simulate(shaper, ["slow", "fast.example"], 180)
    slow_steady = [t for t in starts["slow"] if t >= 60]
    assert len(slow_steady) / 2 == pytest.approx(120, rel=0.01)  # per minute
    # the unthrottled destination in the same scheduler is limited only by its own 100/s
    fast_steady = [t for t in starts["fast.example"] if t >= 60]
    assert len(fast_steady) / 120 == pytest.approx(100, rel=0.01)  # per second
    assert deferred["fast.example"] == 0


def test_shards_divide_the_provider_rate():
    shaper = PolicyShaper(load_policy_text(POLICY), "default", adaptive=False)
    starts, _ = simulate(shaper, [f"big#{n}" for n in range(4)], 70, step=0.02)
    total = sum(len([t for t in s if 10 <= t < 70]) for s in starts.values())
    assert total == pytest.approx(1200, rel=0.01)


def test_new_destination_gets_no_burst():
    shaper = PolicyShaper(load_policy_text(POLICY), "default", adaptive=False)
    assert shaper.try_start("google", 0.0) is not None
    assert shaper.try_start("google", 0.0) is None  # 10/s: next one after 0.1 s
    assert shaper.wait_time("google", 0.0) == pytest.approx(0.1)


def test_a_slot_that_carried_several_messages_pays_for_each():
    shaper = PolicyShaper(load_policy_text(POLICY), "default", adaptive=False)
    source = shaper.try_start("google", 0.0)
    assert source is not None
    shaper.finished("google", source, 0.0)
    shaper.charge("google", source, 0.0, 4)  # a bulk message went as 5 transactions
    assert shaper.try_start("google", 0.3) is None
    assert shaper.wait_time("google", 0.3) == pytest.approx(0.2)  # 5 messages at 10/s


def test_mx_rollup_at_delivery():
    shaper = PolicyShaper(load_policy_text(POLICY), "default", adaptive=False)
    assert shaper.lanes.of("hosted.example", 0.0)[0].steering.connections(0.0) == 10
    shaper.learn_mx("hosted.example", ["aspmx.l.google.com"])
    assert shaper.provider("hosted.example") == "google"
    lane = shaper.lanes.of("hosted.example", 0.0)[0]
    assert lane.steering.connections(0.0) == 5
    assert lane.rates[0].per_second == pytest.approx(10.0)


def test_warmup_cap_defers_until_next_hour():
    start = date(2026, 11, 1)
    clock = Clock(datetime(2026, 11, 1, 10, 0, tzinfo=UTC).timestamp())
    plan = Plan.from_config(WarmupConfig(start=start, schedule="sendgrid-like"))
    shaper = PolicyShaper(
        load_policy_text(POLICY),
        "newip",
        adaptive=False,
        warmup=PoolWarmup.single(WarmupTracker("newip", plan)),
        wall=clock,
    )
    sched = Scheduler(shaper, 5.0)
    started = 0
    now = 0.0
    deferrals = []
    for _ in range(100):
        d = sched.push("fast.example", object(), now)
        if d is not None:
            deferrals.append(d)
    while now < 60:
        jobs = sched.take(now)
        for job in jobs:
            sched.done(job, now)
        started += len(jobs)
        deferrals += sched.overdue(now)
        now += 0.01
        clock.t += 0.01
    assert started == 20  # day 1: 20 an hour, then the rest waits for the next hour
    assert len(deferrals) == 80
    assert all(d.wait > 3000 for d in deferrals)


def test_bench_figures():
    from bench_shaping_figures import simulated, summarize, worst_burst

    assert worst_burst([0, 0, 0, 0.5, 1.0, 1.0], 1.0) == 4
    assert worst_burst([0, 0, 0, 0.5, 1.0, 1.0], 0.5) == 3
    figures = summarize({"k": [i * 0.5 for i in range(121)]}, {"k": 2.0})
    assert figures["k"]["achieved_per_min"] == pytest.approx(121.0)
    assert figures["k"]["worst_burst"] == 1
    sim = simulated(["slow"], seconds=70, step=0.01, policy=load_policy_text(POLICY))
    assert sim["slow"]["configured_per_min"] == pytest.approx(120)
    assert sim["slow"]["ratio"] == pytest.approx(1.0, abs=0.01)
    assert sim["slow"]["worst_burst"] == 1


def test_transactional_overtakes_bulk_for_the_same_destination():
    shaper = PolicyShaper(load_policy_text(POLICY), "default", adaptive=False)
    sched = Scheduler(shaper, 30.0, urgent=lambda item: item.startswith("tx"))
    for n in range(20):
        assert sched.push("slow", f"bulk{n}", 0.0) is None
    # 2/s: the 20 bulk messages need 10 s; a transactional one waits only for its own kind
    assert shaper.estimate_wait("slow", 0.0, 20) == pytest.approx(10.0)
    assert sched.push("slow", "tx0", 0.0) is None
    assert sched.push("slow", "tx1", 0.0) is None
    assert sched.push("slow", "bulk20", 0.0) is None
    order = []
    now = 0.0
    while len(order) < 23:
        for job in sched.take(now):
            order.append(job.item)
            sched.done(job, now)
        now += 0.05
    assert order[:2] == ["tx0", "tx1"]
    assert order[2:] == [f"bulk{n}" for n in range(21)]
    # another destination's queue is unaffected
    assert sched.push("fast.example", "bulk", now) is None


def test_transactional_push_estimates_its_wait_behind_transactional_only():
    shaper = PolicyShaper(load_policy_text(POLICY), "default", adaptive=False)
    sched = Scheduler(shaper, 5.0, urgent=lambda item: item.startswith("tx"))
    deferred = [sched.push("slow", f"bulk{n}", 0.0) for n in range(30)]
    assert sum(d is not None for d in deferred) > 0  # bulk beyond 5 s leaves memory
    assert sched.push("slow", "tx", 0.0) is None  # transactional still fits the horizon
