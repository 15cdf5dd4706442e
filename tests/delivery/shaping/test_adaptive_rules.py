"""Adaptive backoff: every shipped rule against realistic replies (support.adaptive_replies)."""

from __future__ import annotations

import pytest
from support.adaptive_replies import CASES, RULES, fire_times, reply

from mailsluice.delivery.shaping.adaptive import AdaptiveEngine


def test_every_shipped_rule_has_cases():
    assert {c[0] for c in CASES} == set(RULES)
    assert len(CASES) == len(RULES)


@pytest.mark.parametrize(("name", "provider", "hit", "miss"), CASES, ids=[c[0] for c in CASES])
def test_rule_triggers_on_its_reply_and_not_on_another(name, provider, hit, miss):
    rule = RULES[name]
    count = rule.trigger.count
    engine = AdaptiveEngine([rule])
    fired = fire_times(engine, provider, hit, count)
    assert name in fired[-1], f"{name} did not fire on {reply(hit)}"
    assert all(name not in f for f in fired[:-1])  # not before the threshold
    other = AdaptiveEngine([rule])
    assert all(name not in f for f in fire_times(other, provider, miss, count + 2))


@pytest.mark.parametrize(("name", "provider", "hit", "miss"), CASES, ids=[c[0] for c in CASES])
def test_provider_rule_ignores_other_providers(name, provider, hit, miss):
    rule = RULES[name]
    if rule.provider == "*":  # catch-all rules apply to every provider
        assert rule.applies_to("someone-else")
        assert rule.applies_to(None)
        return
    engine = AdaptiveEngine([rule])
    fired = fire_times(engine, "someone-else", hit, rule.trigger.count + 1)
    assert all(name not in f for f in fired)
