"""The shaping engine inside the worker's scheduler, with a simulated clock: policy rates hold,
throttled / suspended / over-cap destinations leave memory, others run at full speed."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime

import pytest

from mailsluice.contracts.control import Command
from mailsluice.delivery.shaping.engine import PolicyShaper, base_limits
from mailsluice.delivery.shaping.scheduler import Scheduler
from mailsluice.delivery.shaping.warmup import WarmupTracker
from mailsluice.policy.backoff import default_rules
from mailsluice.policy.shaping import WarmupConfig, default_policy, load_policy_text
from mailsluice.policy.warmup import Plan

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

REPUTATION = (
    421,
    "4.7.28",
    "[192.0.2.1 15] Our system has detected an unusual rate of 4.7.28 unsolicited mail "
    "originating from your IP address. To protect our users from spam, mail sent from your IP "
    "address has been temporarily 4.7.28 rate limited.",
)


class Clock:
    def __init__(self, start: float = 1_000_000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t


def simulate(shaper, keys, seconds, *, step=0.01, horizon=5.0, backlog=50, observe=None):
    """Keep `backlog` messages queued per key; start whatever the scheduler allows; each send
    takes one step. Returns (starts per key, deferrals per key)."""
    sched = Scheduler(shaper, horizon)
    starts = {k: [] for k in keys}
    deferred = {k: 0 for k in keys}
    now = 0.0
    running = []
    while now < seconds:
        for key in keys:
            while sched.queued(key) < backlog:
                if sched.push(key, object(), now) is not None:
                    deferred[key] += 1
                    break
        for job in running:
            sched.done(job, now)
        running = sched.take(now)
        for job in running:
            starts[job.key].append(now)
            if observe is not None:
                observe(shaper, job.key, now)
        for d in sched.overdue(now):
            deferred[d.job.key] += 1
        now += step
    return starts, deferred


def test_base_limits_from_policy():
    limits = base_limits(default_policy().resolve("google"))
    assert limits.connections == 5
    assert limits.message_rates[0].per_second == 100
    assert limits.message_rates[0].burst == 5


def test_policy_rate_holds_within_one_percent_and_others_run_free():
    shaper = PolicyShaper(load_policy_text(POLICY), "default", rules=[])
    starts, deferred = simulate(shaper, ["slow", "fast.example"], 180)
    slow_steady = [t for t in starts["slow"] if t >= 60]
    assert len(slow_steady) / 2 == pytest.approx(120, rel=0.01)  # per minute
    # the unthrottled destination in the same scheduler is limited only by its own 100/s
    fast_steady = [t for t in starts["fast.example"] if t >= 60]
    assert len(fast_steady) / 120 == pytest.approx(100, rel=0.01)  # per second
    assert deferred["fast.example"] == 0


def test_shards_divide_the_provider_rate():
    shaper = PolicyShaper(load_policy_text(POLICY), "default", rules=[])
    starts, _ = simulate(shaper, [f"big#{n}" for n in range(4)], 70, step=0.02)
    total = sum(len([t for t in s if 10 <= t < 70]) for s in starts.values())
    assert total == pytest.approx(1200, rel=0.01)


def test_new_destination_gets_no_burst():
    shaper = PolicyShaper(load_policy_text(POLICY), "default", rules=[])
    assert shaper.try_start("google", 0.0)
    assert not shaper.try_start("google", 0.0)  # 10/s: next one after 0.1 s
    assert shaper.wait_time("google", 0.0) == pytest.approx(0.1)


def test_reputation_deferral_throttles_then_rate_recovers():
    shaper = PolicyShaper(load_policy_text(POLICY), "default", rules=default_rules())
    hit = {"done": False}

    def observe(s, key, now):
        if key == "google" and now >= 30 and not hit["done"]:
            hit["done"] = True
            s.observe(key, now, [REPUTATION])

    starts, deferred = simulate(shaper, ["google", "other.example"], 60, observe=observe)
    assert hit["done"]
    before = [t for t in starts["google"] if 20 <= t < 30]
    after = [t for t in starts["google"] if 31 <= t < 60]
    assert len(before) == pytest.approx(100, rel=0.02)  # 10/s
    assert len(after) <= 1  # 1 per minute
    assert deferred["google"] > 0  # its backlog left memory for a delay topic
    other = [t for t in starts["other.example"] if 31 <= t < 60]
    assert len(other) / 29 == pytest.approx(100, rel=0.02)  # untouched
    state = shaper.adaptive.peek("google")
    assert state is not None
    assert state.mode(40) == "throttled"
    # after the 90-minute hold the rate recovers step by step, then the full rate is back
    rates = []
    for step in range(4):
        t = 30 + 90 * 60 + step * 15 * 60 + 1
        shaper.wait_time("google", t)
        rates.append(shaper.limiters.get("google", t).current_rate())
    assert 1 / 60 < rates[0] < rates[1] < rates[2] < rates[3] < 10.0
    end = 30 + 90 * 60 + 4 * 15 * 60
    shaper.wait_time("google", end + 1)
    assert shaper.limiters.get("google", end + 1).current_rate() == pytest.approx(10.0)
    assert shaper.limiters.limits_for("google").message_rates[0].per_second == pytest.approx(10.0)


def test_suspension_defers_and_resume_lifts_it():
    clock = Clock()
    shaper = PolicyShaper(load_policy_text(POLICY), "default", wall=clock)
    sched = Scheduler(shaper, 5.0)
    shaper.observe(
        "yahoo",
        0.0,
        [
            (
                421,
                "4.7.0",
                "[TSS04] Messages from 192.0.2.1 temporarily deferred due to user complaints",
            )
        ],
    )
    # yahoo is no provider in this policy: the TS04 suspension (provider yahoo) does not apply,
    # only the catch-all "messages from <ip> temporarily deferred" throttle
    assert shaper.adaptive.peek("yahoo").mode(1.0) == "throttled"
    cmd = Command("default", "example.org", "suspend", until=clock() + 3600)
    assert shaper.apply_command(cmd, 0.0)
    deferral = sched.push("example.org", "m", 0.0)
    assert deferral is not None
    assert deferral.wait == pytest.approx(3600)
    assert not shaper.try_start("example.org", 10.0)
    shaper.apply_command(Command("default", "example.org", "resume"), 20.0)
    assert shaper.try_start("example.org", 20.0)
    assert not shaper.apply_command(Command("other-pool", "example.org", "resume"), 20.0)


def test_ts04_suspends_yahoo_with_the_shipped_policy():
    shaper = PolicyShaper(default_policy(), "default")
    shaper.observe("yahoo", 0.0, [(421, "4.7.0", "[TS04] Messages from 192.0.2.1 deferred")])
    assert shaper.wait_time("yahoo", 1.0) == pytest.approx(7199.0)
    assert shaper.estimate_wait("yahoo", 1.0, 0) == pytest.approx(7199.0)
    assert shaper.wait_time("google", 1.0) == 0.0


def test_bounce_rule_is_exposed():
    shaper = PolicyShaper(default_policy(), "default")
    text = "[TSS09] All messages from x will be permanently deferred; Retrying will NOT succeed"
    assert shaper.should_bounce("yahoo", (421, "4.7.0", text))
    assert not shaper.should_bounce("yahoo", (421, "4.7.0", "try later"))
    shaper.observe("yahoo", 0.0, [(421, "4.7.0", text)])
    assert any(f.action == "bounce" for _k, f in shaper.fired)


def test_mx_rollup_at_delivery():
    shaper = PolicyShaper(load_policy_text(POLICY), "default", rules=[])
    assert shaper.limiters.limits_for("hosted.example").connections == 10
    shaper.learn_mx("hosted.example", ["aspmx.l.google.com"])
    assert shaper.provider("hosted.example") == "google"
    assert shaper.limiters.limits_for("hosted.example").connections == 5


def test_warmup_cap_defers_until_next_hour():
    start = date(2026, 11, 1)
    clock = Clock(datetime(2026, 11, 1, 10, 0, tzinfo=UTC).timestamp())
    plan = Plan.from_config(WarmupConfig(start=start, schedule="sendgrid-like"))
    shaper = PolicyShaper(
        load_policy_text(POLICY), "newip", rules=[], warmup=WarmupTracker("newip", plan), wall=clock
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


def test_rows_snapshot():
    clock = Clock()
    shaper = PolicyShaper(default_policy(), "default", wall=clock)
    shaper.try_start("google", 0.0)
    shaper.observe("google", 0.0, [REPUTATION])
    rows = {r.key: r for r in shaper.rows(1.0, lambda k: 7)}
    g = rows["google"]
    assert (g.state, g.queued, g.active, g.connections) == ("throttled", 7, 1, 1)
    assert g.rate == pytest.approx(1 / 60)
    assert g.rule == "google-unsolicited-rate-ip"
    assert g.until == pytest.approx(clock() + 90 * 60 - 1)
    assert "unusual rate" in g.last_error
    assert not math.isinf(g.rate)


def test_throttled_deferrals_come_back_when_the_rate_rises():
    shaper = PolicyShaper(default_policy(), "default")
    shaper.observe("google", 0.0, [REPUTATION])
    # at 1/min, the 100th queued message would wait 100 minutes; it comes back at the end of
    # the 90-minute hold instead and is scheduled again at the rate of that time
    assert shaper.estimate_wait("google", 60.0, 100) == pytest.approx(90 * 60 - 60)


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
    shaper = PolicyShaper(load_policy_text(POLICY), "default", rules=[])
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
    shaper = PolicyShaper(load_policy_text(POLICY), "default", rules=[])
    sched = Scheduler(shaper, 5.0, urgent=lambda item: item.startswith("tx"))
    deferred = [sched.push("slow", f"bulk{n}", 0.0) for n in range(30)]
    assert sum(d is not None for d in deferred) > 0  # bulk beyond 5 s leaves memory
    assert sched.push("slow", "tx", 0.0) is None  # transactional still fits the horizon
