"""Metrics of the shaping engine: destination states, backoff triggers, provider rates, warm-up,
and what shaping did to messages (delay, suspensions, overflow)."""

from __future__ import annotations

from collections import Counter as Tally
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from mailsluice.metrics.labels import OTHER, provider_label

# --- end of connections open per destination class ---


# --- shaping and warm-up ------------------------------------------------------------------------


class Shaping:
    """Metrics of the shaping engine (`... import Shaping as shaping_metrics`). Pool, provider
    and rule names are configuration, states and actions are fixed; destinations that are raw
    domains are counted, never named."""

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

    @staticmethod
    def export(shaper: Any, now: float) -> None:
        """Update the gauges from a PolicyShaper's state (call periodically); drains fired
        rules."""
        pool = shaper.pool
        for _key, fired in shaper.fired:
            Shaping.BACKOFF_TRIGGERS.labels(pool, fired.rule, fired.action).inc()
        shaper.fired.clear()
        states: Tally[str] = Tally()
        for key in set(shaper.limiters.keys()) | set(shaper.adaptive.keys()):
            state = shaper.adaptive.peek(key)
            states[state.mode(now) if state is not None else "normal"] += 1
            provider = shaper.provider(key)
            if provider is not None and provider == key.partition("#")[0]:
                rate = shaper.limiters.get(key, now).current_rate()
                Shaping.PROVIDER_RATE.labels(pool, key).set(rate)
        for state_name in Shaping.STATES:
            Shaping.DESTINATIONS.labels(pool, state_name).set(states[state_name])
        if shaper.warmup is not None:
            status = shaper.warmup.status(shaper.wall())
            Shaping.WARMUP_DAY.labels(pool).set(status.day)
            for scope, info in status.scopes.items():
                cap = -1 if info.cap is None else info.cap
                Shaping.WARMUP_CAP.labels(pool, scope, info.period).set(cap)
                Shaping.WARMUP_USED.labels(pool, scope, info.period).set(info.used)


# --- delivery worker: shaping delay, suspensions, warm-up overflow ------------------------------


class ShapingFlow:
    """What shaping did to messages in a worker (`... import ShapingFlow as flow_metrics`)."""

    DELAY_BUCKETS = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

    DELAY = Histogram(
        "mailsluice_shaping_delay_seconds",
        "How long a message waited in the worker's scheduler past its ready time before its "
        "send started (rate, connections, suspension, warm-up); 0 when it went at once.",
        ["pool", "provider"],
        buckets=DELAY_BUCKETS,
    )
    SUSPENSIONS = Counter(
        "mailsluice_shaping_suspensions_total",
        "Destination suspensions, by the backoff rule that suspended it (`operator`: a "
        "`mailsluice destinations suspend` command).",
        ["pool", "rule"],
    )
    OVERFLOW = Counter(
        "mailsluice_warmup_overflow_messages_total",
        "Messages over the pool's warm-up cap moved to the overflow pool's queue.",
        ["pool", "target_pool"],
    )

    @staticmethod
    def delay(pool: str, provider: str | None, seconds: float) -> None:
        label = OTHER if provider is None else provider_label(provider)
        ShapingFlow.DELAY.labels(pool, label).observe(max(0.0, seconds))
