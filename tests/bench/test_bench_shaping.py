"""The figures of `make bench`'s shaping stage (scripts/bench_shaping.py) on hand-made delivery
times: achieved rate over the steady window, worst 1 s burst and the GCRA envelope excess."""

from __future__ import annotations

import math

import pytest
from support.scripts import script

shaping_figures = script("bench_shaping_figures")


def gcra(rate: float, burst: int, count: int, start: float = 0.0) -> list[float]:
    """Send times of a sender always ready, through an exact GCRA (rate, burst)."""
    interval, tolerance = 1.0 / rate, (burst - 1) / rate
    tat, now, out = start, start, []
    while len(out) < count:
        now = max(now, tat - tolerance)
        out.append(now)
        tat = max(tat, now) + interval
    return out


def test_achieved_rate_counts_the_half_open_window():
    times = [i * 0.1 for i in range(200)]  # 10/s for 20 s
    assert shaping_figures.achieved_per_s(times, 5.0, 15.0) == pytest.approx(10.0)
    assert shaping_figures.achieved_per_s(times, 0.0, 0.05) == pytest.approx(20.0)  # t=0 only
    assert shaping_figures.achieved_per_s([], 0.0, 1.0) == 0.0
    assert math.isnan(shaping_figures.achieved_per_s(times, 3.0, 3.0))


def test_drain_rate_is_gaps_over_span():
    assert shaping_figures.drain_per_s([0.0, 0.5, 1.0, 2.0]) == pytest.approx(1.5)
    assert shaping_figures.drain_per_s([3.0]) is None
    assert shaping_figures.drain_per_s([1.0, 1.0]) is None


def test_conforming_gcra_traffic_has_no_excess():
    times = gcra(10.0, 5, 300)
    assert times[:5] == [0.0] * 5  # the burst goes back to back
    assert shaping_figures.envelope_excess(times, 10.0, 5) == 0.0
    # one message less of burst allowance: the five at t=0 are one too many
    assert shaping_figures.envelope_excess(times, 10.0, 4) == pytest.approx(1.0)
    # the same traffic judged against a slower rate overshoots by the rate difference
    assert shaping_figures.envelope_excess(times, 9.0, 5) == pytest.approx(29.5, abs=0.01)


def test_a_burst_in_the_middle_is_found():
    times = [i * 0.1 for i in range(100)] + [5.05] * 8  # 8 extra at once, mid-stream
    # window [5.0, 5.1] holds ten (paced 5.0 and 5.1, eight extra) where 2 + 1 are allowed
    assert shaping_figures.envelope_excess(times, 10.0, 2) == pytest.approx(10 - 1 - 2, abs=0.01)
    assert shaping_figures.worst_burst(times, 1.0) == 18
    assert shaping_figures.envelope_excess([], 10.0, 2) == 0.0


def test_largest_gap_finds_a_handover_pause():
    times = [i * 0.1 for i in range(50)] + [4.9 + 3.2 + i * 0.1 for i in range(50)]
    assert shaping_figures.largest_gap(times) == pytest.approx(3.2)
    assert shaping_figures.largest_gap([2.0]) == 0.0


def test_measured_row_of_a_limited_and_an_unthrottled_destination():
    limited = gcra(10.0, 5, 700)  # 69.5 s of traffic
    row = shaping_figures.measured(limited, 10.0, 5, start=5.0, end=65.0)
    assert row["messages"] == 700
    assert row["configured_per_min"] == 600
    assert row["achieved_per_min"] == pytest.approx(600, abs=1.01)
    assert abs(row["error_pct"]) < 0.2
    assert row["excess"] == 0.0
    assert row["worst_1s"] <= row["allowed_1s"] == 15
    # a sender 10% too fast shows as +10% and a growing excess
    fast = [i / 11.0 for i in range(770)]
    row = shaping_figures.measured(fast, 10.0, 5, start=5.0, end=65.0)
    assert row["error_pct"] == pytest.approx(10.0, abs=0.2)
    assert row["excess"] > 60
    free = shaping_figures.measured(
        [i * 0.001 for i in range(1001)], None, None, start=0.0, end=1.0
    )
    assert free["achieved_per_s"] == pytest.approx(1000.0)
    assert "error_pct" not in free
    table = shaping_figures.format_rows("p", {"A": {**row, "by_worker": {"w1": 770}}, "C": free})
    assert len(table) == 3
    assert "+10" in table[1] and "w1=770" in table[1]
    assert "unthrottled" in table[2] and "60000" in table[2]


def test_bench_script_policy_is_valid_and_names_each_destination():
    bench_shaping = script("bench_shaping")

    from mailsluice.delivery.shaping.engine import PolicyShaper
    from mailsluice.policy.shaping import load_policy_text

    shaper = PolicyShaper(load_policy_text(bench_shaping.policy_text()), "p")
    for dest in bench_shaping.DESTINATIONS:
        (lane,) = shaper.lanes.of(dest.domain, 0.0)
        assert lane.steering.state == "fixed"  # the policy says adaptive = false
        (rate,) = lane.rates
        if dest.rate_per_min is None:
            assert rate.per_second > 1000
        else:
            assert rate.per_second * 60 == pytest.approx(dest.rate_per_min)
            assert rate.burst == dest.burst


def test_bench_script_learning_phase_makes_only_a_adaptive_and_measures_after_the_lead_in():
    bench_shaping = script("bench_shaping")

    from mailsluice.delivery.shaping.engine import PolicyShaper
    from mailsluice.policy.shaping import load_policy_text

    shaper = PolicyShaper(load_policy_text(bench_shaping.policy_text("A")), "p")
    states = {
        d.name: shaper.lanes.of(d.domain, 0.0)[0].steering.state for d in bench_shaping.DESTINATIONS
    }
    assert states == {"A": "slow_start", "B": "fixed", "C": "fixed"}
    (learn,) = [p for p in bench_shaping.PHASES if p.learn]
    assert learn.rebalance and learn.lead_in == bench_shaping.LEARN_S
    # slow start's first minute does not count: the measured window starts after the lead-in
    slow = [(float(t), "w1") for t in range(90)]  # 1/s while learning
    steady = [(t, "w1") for t in gcra(10.0, 5, 600, start=90.0)]
    figures = bench_shaping.phase_figures({"A": slow + steady}, end=150.0, warmup_s=90.0)
    assert abs(figures["A"]["error_pct"]) < 1


def test_bench_script_phase_figures_split_by_worker():
    bench_shaping = script("bench_shaping")

    w1, w2 = bench_shaping.WORKERS
    # A handed over from w1 to w2 after 20 s, with a 2 s gap; nothing reached B or C
    a = [(t, w1) for t in gcra(10.0, 5, 200, start=100.0)]
    a += [(t, w2) for t in gcra(10.0, 5, 200, start=a[-1][0] + 2.0)]
    figures = bench_shaping.phase_figures({"A": a}, end=a[-1][0] + 0.05)
    assert figures["A"]["by_worker"] == {"w1": 200, "w2": 200}
    assert figures["A"]["max_gap_s"] == pytest.approx(2.0)
    assert figures["A"]["excess"] == 0.0  # a fresh burst after a 2 s pause is within the limit
    assert figures["A"]["error_pct"] < -3  # the handover gap costs rate
    assert figures["B"]["messages"] == 0 and figures["B"]["by_worker"] == {}
