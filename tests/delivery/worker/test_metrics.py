"""Shaping metrics of the worker side: the delay a message spent held by shaping (by pool and
provider, never a raw domain) and suspensions by the rule (or operator) that caused them."""

from __future__ import annotations

from prometheus_client import REGISTRY
from support.attempts import attempts_for
from support.metrics import sample
from support.shaping import SimResult

from mailsluice.contracts.control import Command
from mailsluice.delivery.shaping.engine import PolicyShaper
from mailsluice.delivery.shaping.scheduler import Job
from mailsluice.delivery.worker.attempts import Attempts
from mailsluice.metrics.shaping import Shaping
from mailsluice.policy.shaping import default_policy


def attempts(pool: str, shaper: PolicyShaper) -> Attempts:
    return attempts_for(pool, None, shaper=shaper)  # not sent through here


def test_shaping_delay_by_provider_and_other_for_domains() -> None:
    shaper = PolicyShaper(default_policy(), "delay-pool")
    a = attempts("delay-pool", shaper)
    a.started(Job("google", None, 0.0, 1.0), 3.5)  # 2.5 s past its ready time
    a.started(Job("google#2", None, 0.0, 1.0), 1.0)  # went at once
    a.started(Job("rare.example", None, 0.0, 0.0), 0.2)
    name = "mailsluice_shaping_delay_seconds"
    assert sample(f"{name}_count", pool="delay-pool", provider="google") == 2
    assert sample(f"{name}_sum", pool="delay-pool", provider="google") == 2.5
    assert sample(f"{name}_bucket", pool="delay-pool", provider="google", le="0.0") == 1
    assert sample(f"{name}_count", pool="delay-pool", provider="other") == 1
    families = {m.name: m for m in REGISTRY.collect()}
    providers = {
        s.labels["provider"]
        for s in families["mailsluice_shaping_delay_seconds"].samples
        if s.labels.get("pool") == "delay-pool"
    }
    assert providers == {"google", "other"}  # never the raw domain


def test_operator_suspensions_and_state_changes_are_counted() -> None:
    shaper = PolicyShaper(default_policy(), "susp-pool")
    name = "mailsluice_shaping_suspensions_total"
    assert shaper.apply_command(Command("susp-pool", "example.org", "suspend", until=1e12), 0.0)
    assert sample(name, pool="susp-pool", rule="operator") == 1
    shaper.apply_command(Command("susp-pool", "example.org", "resume"), 1.0)
    assert sample(name, pool="susp-pool", rule="operator") == 1
    # a block reply stops the destination: one change, counted by the state and class
    blocked = SimResult(
        "r",
        421,
        "4.7.0",
        "Your IP 192.0.2.1 is temporarily blocked after repeated deferrals",
        "greeting",
        "",
    )
    shaper.observe("isp.example", 2.0, [blocked])
    changes = shaper.drain_changes()
    assert [(c.to_state, c.cls) for c, _rule in changes] == [("blocked", "block")]
    for change, _rule in changes:
        Shaping.changed("susp-pool", change)
    changes_name = "mailsluice_shaping_state_changes_total"
    assert sample(changes_name, pool="susp-pool", state="blocked", reply_class="block") == 1
    assert shaper.drain_changes() == []
