"""Metrics of the shaping engine: destination states and their changes, what providers may
receive now and what was learned of them, warm-up, and what shaping did to messages (delay,
suspensions, overflow)."""

from __future__ import annotations

from collections import Counter as Tally
from collections import defaultdict
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from mailsluice.contracts.routing import base_of
from mailsluice.metrics.labels import OTHER, provider_label
from mailsluice.policy.replies import ReplyClass

# Label values of reply_class: the closed set, or OTHER.
REPLY_CLASSES = frozenset(c.value for c in ReplyClass)

# --- shaping and warm-up ------------------------------------------------------------------------


class Shaping:
    """Metrics of the shaping engine (`... import Shaping as shaping_metrics`). Pool and
    provider names are configuration, states and reply classes are fixed; destinations that
    are raw domains are counted, never named, and source addresses are summed over, except in
    the warm-up's metrics: each address warms up on its own, and a pool's addresses are
    configuration too (`source_ip`)."""

    STATES = ("fixed", "slow_start", "steady", "hold", "probing", "blocked", "probe", "suspended")

    DESTINATIONS = Gauge(
        "mailsluice_shaping_destinations",
        "Destination lanes (one per destination and source address) known to the worker, by "
        "controller state.",
        ["pool", "state"],
    )
    STATE_CHANGES = Counter(
        "mailsluice_shaping_state_changes_total",
        "Destination state changes (or newly learned limits), by the state entered and the "
        "class of the reply that caused it.",
        ["pool", "state", "reply_class"],
    )
    PROVIDER_RATE = Gauge(
        "mailsluice_shaping_provider_rate_messages_per_second",
        "Message rate provider destinations may receive now, all source addresses together.",
        ["pool", "provider"],
    )
    PROVIDER_CEILING = Gauge(
        "mailsluice_shaping_provider_learned_ceiling_messages_per_second",
        "Rate at which provider destinations last deferred, all source addresses together "
        "(0: no limit found yet).",
        ["pool", "provider"],
    )
    PROVIDER_CONNECTIONS = Gauge(
        "mailsluice_shaping_provider_connections",
        "Connections provider destinations may have open now, all source addresses together.",
        ["pool", "provider"],
    )
    WARMUP_DAY = Gauge(
        "mailsluice_warmup_day",
        "Day of a source address's warm-up (1 = start); warm addresses have none.",
        ["pool", "source_ip"],
    )
    WARMUP_CAP = Gauge(
        "mailsluice_warmup_cap_messages",
        "This worker's warm-up cap of a source address for the current period (-1: warm-up "
        "complete, no cap).",
        ["pool", "source_ip", "scope", "period"],
    )
    WARMUP_USED = Gauge(
        "mailsluice_warmup_used_messages",
        "Messages from a source address counted against its warm-up cap in the current period "
        "by this worker.",
        ["pool", "source_ip", "scope", "period"],
    )

    @staticmethod
    def changed(pool: str, change: Any) -> None:
        """One state change (controller.Change)."""
        reply_class = change.cls if change.cls in REPLY_CLASSES else OTHER
        state = change.to_state if change.to_state in Shaping.STATES else OTHER
        Shaping.STATE_CHANGES.labels(pool, state, reply_class).inc()

    @staticmethod
    def export(shaper: Any, now: float) -> None:
        """Update the gauges from a PolicyShaper's state (call periodically)."""
        pool = shaper.pool
        states: Tally[str] = Tally()
        rate: dict[str, float] = defaultdict(float)
        ceiling: dict[str, float] = defaultdict(float)
        conns: dict[str, int] = defaultdict(int)
        for lane in shaper.lanes.all():
            suspension = shaper.suspended.get(lane.key)
            held = suspension is not None and now < suspension.until
            states["suspended" if held else lane.steering.state] += 1
            provider = shaper.provider(lane.key)
            if provider is not None and provider == base_of(lane.key):
                learned = lane.steering.learned()
                rate[provider] += lane.rate(now)
                ceiling[provider] += learned.ceiling if learned.ceiling < float("inf") else 0.0
                conns[provider] += lane.steering.connections(now)
        for state_name in Shaping.STATES:
            Shaping.DESTINATIONS.labels(pool, state_name).set(states[state_name])
        for provider, allowed in rate.items():
            Shaping.PROVIDER_RATE.labels(pool, provider).set(allowed)
            Shaping.PROVIDER_CEILING.labels(pool, provider).set(ceiling[provider])
            Shaping.PROVIDER_CONNECTIONS.labels(pool, provider).set(conns[provider])
        for status in [] if shaper.warmup is None else shaper.warmup.status(shaper.wall()):
            address = status.source
            Shaping.WARMUP_DAY.labels(pool, address).set(status.day)
            for scope, info in status.scopes.items():
                cap = -1 if info.cap is None else info.cap
                Shaping.WARMUP_CAP.labels(pool, address, scope, info.period).set(cap)
                Shaping.WARMUP_USED.labels(pool, address, scope, info.period).set(info.used)


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
        "Destination suspensions by `mailsluice destinations suspend` commands (`rule` is "
        "always `operator`: blocks by a destination count as state changes to `blocked`).",
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
