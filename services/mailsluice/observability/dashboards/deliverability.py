"""Deliverability dashboard: outcomes, deferrals, bounces, shaping and engagement per provider."""

from __future__ import annotations

from mailsluice.observability.dashboards.panels import POOL, PP, Panel, rate, ratio

# Feedback-loop (ARF) complaints counted at ingest over recipients delivered to the same provider;
# a provider with deliveries and no complaint counted shows 0 rather than nothing.
_COMPLAINTS = rate("mailsluice_ingest_complaints_total", PP, "provider")
_DELIVERED = rate(
    "mailsluice_delivery_provider_recipients_total", f'{PP}, result="delivered"', "provider"
)
COMPLAINT_RATE = f"({_COMPLAINTS}\n  or 0 * {_DELIVERED})\n  / clamp_min({_DELIVERED}, 1e-9)"

# --- engagement (streams/engaged.py): unique opens and clicks per delivered recipient, counted by
# the stream processors; the human ones less those an every-link burst took back afterwards.
_STREAMS_DELIVERED = rate("mailsluice_streams_delivered_total", PP, "provider")


def _unique(what: str, kind: str) -> str:
    """Unique `what`s (open, click) per second by provider; the human ones 0, not nothing, where
    there are machine ones only."""
    every = rate(f"mailsluice_streams_{what}s_total", f'{PP}, kind="all"', "provider")
    if kind == "all":
        return every
    counted = rate(f"mailsluice_streams_{what}s_total", f'{PP}, kind="human"', "provider")
    back = rate("mailsluice_streams_human_retracted_total", f'{PP}, kind="{what}"', "provider")
    return f"(({counted}\n  - ({back} or 0 * {counted}))\n  or 0 * {every})"


def _per(numerator: str, denominator: str) -> str:
    return f"{numerator}\n  / clamp_min({denominator}, 1e-9)"


def _engagement_rate(what: str, per: str | None) -> tuple[tuple[str, str], ...]:
    """Human and raw: `what` per delivered recipient, or per `per` (click-to-open)."""
    return tuple(
        (
            _per(_unique(what, kind), _unique(per, kind) if per else _STREAMS_DELIVERED),
            "{{provider}} " + kind,
        )
        for kind in ("human", "all")
    )


ENGAGEMENT = (
    Panel(
        "Open rate by provider",
        "percentunit",
        _engagement_rate("open", None),
        "Unique opens per delivered recipient: estimated human, and all (machine opens such as "
        "Apple Mail Privacy Protection's too). A click counts as an open.",
    ),
    Panel(
        "Click-through rate by provider",
        "percentunit",
        _engagement_rate("click", None),
        "Unique clicks per delivered recipient: estimated human (no scanner, no every-link "
        "burst), and all.",
    ),
    Panel(
        "Click-to-open rate by provider",
        "percentunit",
        _engagement_rate("click", "open"),
        "Unique clicks per unique open, human and all.",
    ),
    Panel(
        "Human and machine opens and clicks",
        "ops",
        tuple(
            (expr, "{{provider}} " + legend)
            for what in ("open", "click")
            for expr, legend in (
                (_unique(what, "human"), f"human {what}s"),
                (f"{_unique(what, 'all')}\n  - {_unique(what, 'human')}", f"machine {what}s"),
            )
        ),
        "Unique opens and clicks per second judged human and not (privacy proxies, prefetch, "
        "scanners, every-link bursts).",
    ),
)

DELIVERABILITY = (
    Panel(
        "Outcomes by provider",
        "ops",
        (
            (
                rate("mailsluice_delivery_provider_recipients_total", PP, "provider, result"),
                "{{provider}} {{result}}",
            ),
        ),
        "Recipient replies by provider: delivered (2xx), deferred (4xx), bounced (5xx).",
        width=24,
    ),
    Panel(
        "Deferral rate by provider",
        "percentunit",
        (
            (
                ratio("mailsluice_delivery_provider_recipients_total", PP, "deferred", "provider"),
                "{{provider}}",
            ),
        ),
        "Share of a provider's recipient replies that were 4xx.",
    ),
    Panel(
        "Bounce rate by provider",
        "percentunit",
        (
            (
                ratio("mailsluice_delivery_provider_recipients_total", PP, "bounced", "provider"),
                "{{provider}}",
            ),
        ),
        "Share of a provider's recipient replies that were 5xx.",
    ),
    Panel(
        "Complaint rate by provider",
        "percentunit",
        ((COMPLAINT_RATE, "{{provider}}"),),
        "Feedback-loop complaints per delivered recipient; Gmail wants < 0.1%, never 0.3%.",
        width=24,
    ),
    Panel(
        "Top deferral reasons",
        "ops",
        (
            (
                "topk(10, "
                + rate("mailsluice_delivery_deferrals_total", PP, "provider, reason")
                + ")",
                "{{provider}} {{reason}}",
            ),
        ),
        "Deferrals by RFC 3463 status class (4.7: policy/reputation, 4.2: mailbox, ...).",
    ),
    Panel(
        "Bounces by class",
        "ops",
        (
            (
                "topk(10, "
                + rate("mailsluice_delivery_bounces_total", PP, "provider, class")
                + ")",
                "{{provider}} {{class}}",
            ),
        ),
        "Bounces by RFC 3463 status class (5.1: bad mailbox, 5.7: policy, ...).",
    ),
    Panel(
        "Destination states",
        "short",
        (
            ("sum by (state) (mailsluice_shaping_destinations{" + POOL + "})", "{{state}}"),
            (
                rate("mailsluice_shaping_state_changes_total", POOL, "state, reply_class"),
                "-> {{state}} on {{reply_class}}",
            ),
        ),
        "Destination lanes (destination x source address) by controller state, and state "
        "changes by the reply class that caused them (per second).",
    ),
    Panel(
        "Allowed and learned rate by provider",
        "ops",
        (
            (
                "mailsluice_shaping_provider_rate_messages_per_second{" + PP + "}",
                "{{provider}} now",
            ),
            (
                "mailsluice_shaping_provider_learned_ceiling_messages_per_second{" + PP + "}",
                "{{provider}} learned ceiling",
            ),
        ),
        "Message rate a provider may receive now, and the rate at which it last deferred "
        "(all source addresses together).",
    ),
    Panel(
        "Warm-up progress (used / cap)",
        "percentunit",
        (
            (
                "max by (pool, source_ip, scope, period) "
                "(mailsluice_warmup_used_messages{" + POOL + "})\n"
                "  / max by (pool, source_ip, scope, period) "
                "(mailsluice_warmup_cap_messages{" + POOL + "} > 0)",
                "{{pool}} {{source_ip}} {{scope}} per {{period}}",
            ),
            (
                "max by (pool, source_ip) (mailsluice_warmup_day{" + POOL + "})",
                "{{pool}} {{source_ip}} day",
            ),
        ),
        "Share of the current warm-up period's cap used, and the warm-up day, per source "
        "address (warm addresses have no cap).",
    ),
    *ENGAGEMENT,
)
