"""Prometheus metrics of the shaping engine. Labels come from closed sets: pool names and
provider names are configuration, rule names come from the rule file, states and actions are
fixed. Destinations that are raw domains are counted, never named."""

from __future__ import annotations

from collections import Counter as Tally

from prometheus_client import Counter, Gauge

from mailsluice.delivery.engine import PolicyShaper

STATES = ("normal", "throttled", "recovering", "suspended")

DESTINATIONS = Gauge(
    "mailsluice_shaping_destinations",
    "Destinations known to the worker, by adaptive state.",
    ["pool", "state"],
)
BACKOFF_TRIGGERS = Counter(
    "mailsluice_shaping_backoff_triggers_total",
    "Adaptive backoff rules that fired, by rule and action.",
    ["pool", "rule", "action"],
)
PROVIDER_RATE = Gauge(
    "mailsluice_shaping_provider_rate_messages_per_second",
    "Current allowed message rate of provider destinations (after backoff).",
    ["pool", "provider"],
)
WARMUP_DAY = Gauge("mailsluice_warmup_day", "Day of the pool's warm-up (1 = start).", ["pool"])
WARMUP_CAP = Gauge(
    "mailsluice_warmup_cap_messages",
    "This worker's warm-up cap for the current period (-1: warm-up complete, no cap).",
    ["pool", "scope", "period"],
)
WARMUP_USED = Gauge(
    "mailsluice_warmup_used_messages",
    "Messages counted against the warm-up cap in the current period by this worker.",
    ["pool", "scope", "period"],
)


def export(shaper: PolicyShaper, now: float) -> None:
    """Update the gauges from the shaper's state (call periodically); drains fired rules."""
    pool = shaper.pool
    for _key, fired in shaper.fired:
        BACKOFF_TRIGGERS.labels(pool, fired.rule, fired.action).inc()
    shaper.fired.clear()
    states: Tally[str] = Tally()
    for key in set(shaper.limiters.keys()) | set(shaper.adaptive.keys()):
        state = shaper.adaptive.peek(key)
        states[state.mode(now) if state is not None else "normal"] += 1
        provider = shaper.provider(key)
        if provider is not None and provider == key.partition("#")[0]:
            PROVIDER_RATE.labels(pool, key).set(shaper.limiters.get(key, now).current_rate())
    for state_name in STATES:
        DESTINATIONS.labels(pool, state_name).set(states[state_name])
    if shaper.warmup is not None:
        status = shaper.warmup.status(shaper.wall())
        WARMUP_DAY.labels(pool).set(status.day)
        for scope, info in status.scopes.items():
            cap = -1 if info.cap is None else info.cap
            WARMUP_CAP.labels(pool, scope, info.period).set(cap)
            WARMUP_USED.labels(pool, scope, info.period).set(info.used)
