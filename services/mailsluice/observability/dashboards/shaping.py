"""The shaping and warm-up panels of the deliverability dashboard: destination lanes by
controller state, state changes, the allowed and learned rates, warm-up progress."""

from __future__ import annotations

import re

from mailsluice.observability.dashboards.panels import GOOD, POOL, PP, WAIT, Panel, rate

# Controller states by meaning: sending freely, holding back or probing, stopped.
_STATE_COLOURS = {
    "steady": GOOD,
    "fixed": "semi-dark-green",
    "slow_start": "light-green",
    "hold": WAIT,
    "probing": "yellow",
    "probe": "light-orange",
    "blocked": "red",
    "suspended": "dark-red",
}
STATE_COLOURS = tuple((re.escape(state), colour) for state, colour in _STATE_COLOURS.items())

_WARMUP_KEYS = "pool, source_ip, scope, period"

SHAPING = (
    Panel(
        "Destination lanes by state",
        "short",
        (("sum by (state) (mailsluice_shaping_destinations{" + POOL + "})", "{{state}}"),),
        "Destination lanes (destination x source address) by controller state, stacked: green "
        "sends freely, amber holds back or probes, red is blocked or suspended.",
        colors=STATE_COLOURS,
        stack=True,
    ),
    Panel(
        "Destination state changes",
        "ops",
        (
            (
                rate("mailsluice_shaping_state_changes_total", POOL, "state, reply_class"),
                "to {{state}} on {{reply_class}}",
            ),
        ),
        "Controller state changes per second, by the new state and the reply class that "
        "caused them.",
    ),
    Panel(
        "Allowed and learned rate by provider",
        "ops",
        (
            (
                "mailsluice_shaping_provider_rate_messages_per_second{" + PP + "}",
                "{{pool}} {{provider}} now",
            ),
            (
                "mailsluice_shaping_provider_learned_ceiling_messages_per_second{" + PP + "}",
                "{{pool}} {{provider}} learned ceiling",
            ),
        ),
        "Message rate a provider may receive now (solid), and the rate at which it last "
        "deferred (dashed; all source addresses together).",
        dashed=(".* learned ceiling",),
    ),
    Panel(
        "Warm-up progress (used / cap)",
        "percentunit",
        (
            (
                f"max by ({_WARMUP_KEYS}) (mailsluice_warmup_used_messages{{{POOL}}})\n"
                f"  / max by ({_WARMUP_KEYS}) (mailsluice_warmup_cap_messages{{{POOL}}} > 0)",
                "{{pool}} {{source_ip}} {{scope}} per {{period}}",
            ),
        ),
        "Share of the current warm-up period's cap used per source address (warm addresses "
        "have no cap).",
        soft_max=1.0,
    ),
    Panel(
        "Warm-up day",
        "short",
        (
            (
                "max by (pool, source_ip) (mailsluice_warmup_day{" + POOL + "})",
                "{{pool}} {{source_ip}}",
            ),
        ),
        "The warm-up schedule's day of each warming source address.",
    ),
)
