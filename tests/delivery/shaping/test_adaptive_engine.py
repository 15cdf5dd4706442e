"""Adaptive backoff: the state machine (thresholds, suspend, throttle and recovery, operator
actions) with a simulated clock."""

from __future__ import annotations

import math

import pytest
from support.adaptive_replies import CASES, IP, RULES, fire_times, reply

from mailsluice.delivery.shaping.adaptive import AdaptiveEngine
from mailsluice.policy.backoff import default_rules, load_rules_text, normalize_text


def test_threshold_window_slides():
    rules = load_rules_text(
        """
[[rule]]
name = "three-in-ten"
text = "slow down"
trigger = "3/10m"
action = "suspend"
duration = "1h"
"""
    )
    engine = AdaptiveEngine(rules)
    # hits 6 minutes apart: never 3 within 10 minutes
    assert fire_times(engine, None, "421 4.7.0 slow down", 5, spacing=360) == [set()] * 5
    # 3 within 10 minutes fires once, then needs 3 fresh hits
    fired = fire_times(engine, None, "421 4.7.0 slow down", 6, start=5000, spacing=60)
    assert [bool(f) for f in fired] == [False, False, True, False, False, True]


def test_suspend_state_machine():
    engine = AdaptiveEngine([RULES["yahoo-ts04-suspend"]])
    code, enh, text = reply(f"421 4.7.0 [TS04] Messages from {IP} temporarily deferred")
    fired = engine.observe("yahoo", "yahoo", (code, enh, text), 100.0)
    assert fired[0].action == "suspend"
    assert fired[0].until == pytest.approx(100.0 + 7200)
    adj = engine.adjust("yahoo", 100.0, 10, 200.0)
    assert adj.mode == "suspended"
    assert adj.suspended_until == pytest.approx(7300.0)
    assert engine.adjust("yahoo", 100.0, 10, 7300.0).mode == "normal"
    # other destinations are untouched
    assert engine.adjust("google", 100.0, 10, 200.0).mode == "normal"


def test_throttle_cuts_and_recovers_stepwise():
    engine = AdaptiveEngine([RULES["google-unsolicited-rate-ip"]])
    hit = CASES[[c[0] for c in CASES].index("google-unsolicited-rate-ip")][2]
    code, enh, text = reply(hit)
    engine.observe("google", "google", (code, enh, text), 0.0)
    rule = RULES["google-unsolicited-rate-ip"]
    # hold: 1/min, 1 connection, for 90 minutes
    held = engine.adjust("google", 100.0, 5, 60.0)
    assert held.mode == "throttled"
    assert held.rate == pytest.approx(1 / 60)
    assert held.connections == 1
    # recovery: strictly rising rate over the steps, then normal
    rates = []
    for step in range(rule.recovery_steps):
        t = rule.duration + step * rule.recovery_step + 1
        adj = engine.adjust("google", 100.0, 5, t)
        assert adj.mode == "recovering"
        rates.append(adj.rate)
    assert rates == sorted(rates)
    assert len(set(rates)) == len(rates)
    assert 1 / 60 < rates[0] < rates[-1] < 100.0
    end = rule.duration + rule.recovery_steps * rule.recovery_step
    back = engine.adjust("google", 100.0, 5, end)
    assert (back.mode, back.rate, back.connections) == ("normal", 100.0, 5)


def test_rate_factor_throttle_and_overlapping_throttles_keep_tighter():
    rules = load_rules_text(
        """
[[rule]]
name = "half"
text = "half"
action = "throttle"
rate_factor = 0.5
duration = "10m"
recovery_steps = 0

[[rule]]
name = "one-conn"
text = "conn"
action = "throttle"
connection_limit = 1
duration = "5m"
recovery_steps = 0
"""
    )
    engine = AdaptiveEngine(rules)
    engine.observe("d", None, (421, "4.7.0", "half please"), 0.0)
    assert engine.adjust("d", 10.0, 4, 1.0).rate == pytest.approx(5.0)
    engine.observe("d", None, (421, "4.7.0", "conn please"), 60.0)
    adj = engine.adjust("d", 10.0, 4, 61.0)
    assert (adj.rate, adj.connections) == (pytest.approx(5.0), 1)
    assert engine.adjust("d", 10.0, 4, 660.0).mode == "normal"


def test_bounce_action_and_success_ignored():
    engine = AdaptiveEngine([RULES["yahoo-retrying-will-not-succeed"]])
    code, enh, text = reply(
        "421 4.7.0 [TSS09] All messages from x will be permanently deferred; "
        "Retrying will NOT succeed."
    )
    fired = engine.observe("yahoo", "yahoo", (code, enh, text), 5.0)
    assert [f.action for f in fired] == ["bounce"]
    assert engine.adjust("yahoo", 10.0, 2, 6.0).mode == "normal"
    assert engine.observe("yahoo", "yahoo", (250, "2.0.0", "Retrying will NOT succeed"), 7.0) == []


def test_operator_suspend_resume_and_forget():
    engine = AdaptiveEngine(default_rules())
    engine.suspend("example.com", 500.0)
    assert engine.adjust("example.com", 1.0, 1, 10.0).mode == "suspended"
    engine.resume("example.com")
    assert engine.adjust("example.com", 1.0, 1, 10.0).mode == "normal"
    engine.forget_idle(10.0 + 86400)
    assert engine.keys() == []


def test_last_error_is_recorded_normalized():
    engine = AdaptiveEngine([])
    code, enh, text = reply("421-4.7.0 first line\n421 4.7.0 second line")
    engine.observe("k", None, (code, enh, text), 1.0)
    state = engine.peek("k")
    assert state is not None
    assert state.last_error == "421 4.7.0 first line second line"


def test_normalize_text_removes_repeated_prefixes_only():
    assert normalize_text(421, "4.7.28", "a of 4.7.28 b") == "a of b"
    assert normalize_text(421, "4.7.0", "keep 4.7.28 and 1421 intact") == (
        "keep 4.7.28 and 1421 intact"
    )


def test_unlimited_base_rate_recovers():
    rules = load_rules_text(
        """
[[rule]]
name = "r"
text = "x"
action = "throttle"
rate = "1/s"
duration = "1m"
recovery_steps = 2
recovery_step = "1m"
"""
    )
    engine = AdaptiveEngine(rules)
    engine.observe("k", None, (421, "4.0.0", "x"), 0.0)
    assert engine.adjust("k", math.inf, 3, 10.0).rate == pytest.approx(1.0)
    assert 1.0 < engine.adjust("k", math.inf, 3, 61.0).rate < math.inf
    assert engine.adjust("k", math.inf, 3, 181.0).rate == math.inf


def test_next_change_points_at_hold_end_and_recovery_steps():
    rules = load_rules_text(
        """
[[rule]]
name = "r"
text = "x"
action = "throttle"
rate_factor = 0.1
duration = "60s"
recovery_steps = 3
recovery_step = "10s"
"""
    )
    engine = AdaptiveEngine(rules)
    assert engine.next_change("k", 0.0) is None
    engine.observe("k", None, (421, "4.0.0", "x"), 100.0)
    assert engine.next_change("k", 100.0) == 160.0
    assert engine.next_change("k", 160.0) == 170.0
    assert engine.next_change("k", 175.0) == 180.0
    assert engine.next_change("k", 185.0) == 190.0
    assert engine.next_change("k", 190.0) is None
