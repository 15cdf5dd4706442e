"""IP warm-up schedules, caps, deferral / overflow and persistence, with a simulated clock."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from mailsluice.contracts.warmup import parse_record_key, record_key
from mailsluice.delivery.shaping.warmup import ScopeStatus, WarmupTracker
from mailsluice.policy.warmup import (
    PRESETS,
    Plan,
    Schedule,
    day_number,
    from_table,
    sendgrid_like,
    ses_45_day,
)
from mailsluice.policy.warmup_config import WarmupConfig

START = date(2026, 11, 1)


def at(day: int, hour: int = 12, minute: int = 0) -> float:
    """Epoch seconds of warm-up day `day` (1 = START) at hour:minute UTC."""
    d = datetime(START.year, START.month, START.day, hour, minute, tzinfo=UTC)
    return d.timestamp() + (day - 1) * 86400


def test_sendgrid_like_preset():
    s = sendgrid_like()
    assert s.period == "hour"
    assert s.days == 41
    assert s.cap(1) == 20
    assert s.cap(2) == 28
    for d in range(2, 42):  # ~1.4x a day
        assert s.cap(d) / s.cap(d - 1) == pytest.approx(1.4, rel=0.03)
    assert s.cap(42) is None  # warm-up over
    assert s.daily(1) == 480


def test_ses_45_day_preset():
    s = ses_45_day()
    assert s.period == "day"
    assert s.days == 45
    assert s.cap(45) == 50_000
    assert s.cap(1) == 100
    assert all(s.cap(d) > s.cap(d - 1) for d in range(2, 46))
    assert s.cap(46) is None
    assert Schedule("day", s.caps, "hold").cap(100) == 50_000


def test_presets_are_registered():
    assert set(PRESETS) == {"sendgrid-like", "ses-45-day"}


def test_custom_table_is_a_step_function():
    s = from_table({"1": 50, "3": 200, "10": 5000})
    assert [s.cap(d) for d in (1, 2, 3, 9, 10)] == [50, 50, 200, 200, 5000]
    assert s.cap(11) is None
    assert from_table({2: 10}).cap(1) == 10  # before the first listed day: its volume
    with pytest.raises(ValueError):
        from_table({})
    with pytest.raises(ValueError):
        from_table({0: 10})


def test_day_counting_from_start_date():
    assert day_number(START, at(1, 0, 0)) == 1
    assert day_number(START, at(1, 23, 59)) == 1
    assert day_number(START, at(2, 0, 0)) == 2
    assert day_number(START, at(41)) == 41
    assert day_number(START, at(-3)) == 1  # before the start: day 1


def tracker(**config) -> WarmupTracker:
    cfg = WarmupConfig(start=START, **config)
    return WarmupTracker("newip", Plan.from_config(cfg))


def drain(t: WarmupTracker, provider, now, limit=10**6):
    """Take messages until refused; return (taken, decision)."""
    for n in range(limit):
        decision = t.try_take(provider, now)
        if decision.action != "allow":
            return n, decision
    return limit, None


def test_hourly_cap_and_defer_to_next_hour():
    t = tracker(schedule="sendgrid-like")
    taken, decision = drain(t, "google", at(1, 10, 15))
    assert taken == 20
    assert decision.action == "defer"
    assert decision.until == at(1, 11, 0)  # the next hour: deferred, never dropped
    # the next hour has a fresh cap
    assert drain(t, "google", at(1, 11, 0))[0] == 20
    # day 2: 28 an hour
    assert drain(t, "google", at(2, 9, 30))[0] == 28


def test_daily_cap_over_a_simulated_week():
    t = tracker(schedule="ses-45-day")
    sched = ses_45_day()
    for day in range(1, 8):
        sent = 0
        for hour in range(24):
            sent += drain(t, None, at(day, hour), limit=sched.cap(day) + 5)[0]
        assert sent == sched.cap(day)


def test_per_provider_tables_and_pool_cap_together():
    t = tracker(
        schedule="custom",
        table={"1": 100},
        providers={"google": {"1": 10}},
    )
    taken, decision = drain(t, "google", at(1))
    assert taken == 10
    assert decision.scope == "google"
    # other providers still have the pool-wide budget left: 100 - 10
    taken, decision = drain(t, "yahoo", at(1))
    assert taken == 90
    assert decision.scope == "*"


def test_overflow_to_another_pool():
    t = tracker(schedule="custom", table={"1": 2}, over_cap="overflow", overflow_pool="shared")
    assert [t.try_take(None, at(1)).action for _ in range(3)] == ["allow", "allow", "overflow"]
    assert t.try_take(None, at(1)).pool == "shared"


def test_warmup_complete_means_no_cap():
    t = tracker(schedule="custom", table={"1": 1, "2": 2})
    assert drain(t, None, at(3), limit=1000)[0] == 1000
    held = tracker(schedule="custom", table={"1": 1, "2": 2}, after_end="hold")
    assert drain(held, None, at(30))[0] == 2


def test_share_divides_the_pool_cap_but_not_provider_caps():
    cfg = WarmupConfig(start=START, schedule="custom", table={"1": 100}, providers={"g": {"1": 8}})
    half = WarmupTracker("p", Plan.from_config(cfg), owner="w1", share=0.5)
    assert half.caps("g", at(1)) == {"*": 50, "g": 8}
    assert drain(half, None, at(1))[0] == 50


def test_status_for_metrics_and_cli():
    t = tracker(schedule="sendgrid-like")
    drain(t, None, at(3), limit=7)
    status = t.status(at(3))
    assert status.day == 3
    assert status.scopes["*"] == ScopeStatus("hour", 39, 7, False)


def test_usage_survives_a_restart_through_records():
    t = tracker(schedule="custom", table={"1": 10})
    drain(t, None, at(1), limit=6)
    records = t.records()
    assert [parse_record_key(k) for k, _ in records] == [("newip", "", "*@0")]
    restarted = tracker(schedule="custom", table={"1": 10})
    for key, value in records:
        assert restarted.restore(key, value)
    assert drain(restarted, None, at(1, 13))[0] == 4  # same day: 6 of 10 were used
    # a record from the previous day does not count today
    fresh = tracker(schedule="custom", table={"1": 10, "2": 10})
    for key, value in records:
        fresh.restore(key, value)
    assert drain(fresh, None, at(2))[0] == 10


def test_restore_ignores_other_pools_tombstones_and_other_warmups():
    t = tracker(schedule="custom", table={"1": 10})
    assert not t.restore(record_key("other", "", "*@0"), b"{}")
    assert not t.restore(record_key("newip", "", "*@0"), None)
    other_start = (
        b'{"v": 1, "start": "2020-01-01", "window": 0, "used": 5, "pool": "newip", "source": "",'
        b' "scope": "*@0"}'
    )
    assert not t.restore(record_key("newip", "", "*@0"), other_start)
    assert t.usage == {}


def test_restore_keeps_the_larger_count_of_the_same_window():
    t = tracker(schedule="custom", table={"1": 10})
    drain(t, None, at(1), limit=3)
    ((key, value),) = t.records()
    drain(t, None, at(1), limit=2)  # 5 now; an older record says 3
    t.restore(key, value)
    assert t.status(at(1)).scopes["*"].used == 5


# --- `mailsluice warmup plan|show` ---------------------------------------------------------


def cli_args(*argv: str):
    import argparse

    from mailsluice.admin import warmup as warmup_cli

    parser = argparse.ArgumentParser(prog="mailsluice warmup")
    warmup_cli.add_arguments(parser)
    return warmup_cli, parser.parse_args(list(argv))


def test_cli_plan_preset(capsys):
    warmup_cli, args = cli_args("plan", "--preset", "sendgrid-like")
    assert warmup_cli.run(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split() == ["*", "1", "20", "hour", "480"]
    assert out[-1].split() == ["*", ">41", "unlimited"]


def test_cli_plan_of_a_pool_from_overrides(capsys):
    overrides = (
        '{"warmup": {"schedule": "custom", "start": "2026-11-01", "table": {"1": 5, "3": 9}}}'
    )
    warmup_cli, args = cli_args("plan", "--pool", "newip", "--overrides", overrides)
    assert warmup_cli.run(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[2] for line in out[1:4]] == ["5", "5", "9"]
    _, args = cli_args("plan", "--pool", "nowarmup")
    assert warmup_cli.run(args) == 0
    assert "has no warm-up" in capsys.readouterr().out
    _, args = cli_args("plan", "--pool", "p", "--overrides", '{"warmup": {"start": "x"}}')
    assert warmup_cli.run(args) == 2


def test_cli_show_sums_the_workers_of_this_period():
    from mailsluice.admin import warmup as warmup_cli

    cfg = WarmupConfig(start=START, schedule="custom", table={"1": 100}, providers={"g": {"1": 9}})
    plan = Plan.from_config(cfg)
    now = at(1, 10, 30)
    a = WarmupTracker("p", plan, owner="a")
    b = WarmupTracker("p", plan, owner="b")
    drain(a, "g", now, limit=4)
    drain(b, None, now, limit=6)
    old = WarmupTracker("p", plan, owner="c")
    drain(old, None, now - 86400, limit=50)  # yesterday: not counted
    other = WarmupTracker("q", plan, owner="a")
    drain(other, None, now, limit=7)  # another pool
    records = a.records() + b.records() + old.records() + other.records()
    usage = warmup_cli.sum_usage(plan, "p", records, now)
    assert usage == {"*": 10, "g": 4}
    lines = warmup_cli.show_lines("p", plan, usage, now)
    assert lines[0] == "pool p: warm-up day 1 (started 2026-11-01)"
    assert "used this day: 10" in lines[1]
    assert "deferred" in lines[-1]
