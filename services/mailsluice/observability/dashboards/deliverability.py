"""Deliverability dashboard: the rates providers judge (stat panels and graphs with their
thresholds), outcomes, deferrals, bounces, outbound SMTP latency, shaping and engagement per
provider."""

from __future__ import annotations

from mailsluice.observability.dashboards.panels import (
    BOUNCE_LIMITS,
    COMPLAINT_LIMITS,
    DEFERRAL_LIMITS,
    PP,
    Panel,
    meaning,
    quantile,
    rate,
    ratio,
)
from mailsluice.observability.dashboards.shaping import SHAPING

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

_PROVIDER_RECIPIENTS = "mailsluice_delivery_provider_recipients_total"
# The selected providers' totals (stat panels) and each provider's (graphs).
_BOUNCES = ratio(_PROVIDER_RECIPIENTS, PP, "bounced")
_DEFERRALS = ratio(_PROVIDER_RECIPIENTS, PP, "deferred")
_COMPLAINTS_ALL = rate("mailsluice_ingest_complaints_total", PP)
_DELIVERED_ALL = rate(_PROVIDER_RECIPIENTS, f'{PP}, result="delivered"')
COMPLAINT_RATE_ALL = (
    f"({_COMPLAINTS_ALL}\n  or 0 * {_DELIVERED_ALL})\n  / clamp_min({_DELIVERED_ALL}, 1e-9)"
)

JUDGED = (
    Panel(
        "Bounce rate",
        "percentunit",
        ((_BOUNCES, "bounced"),),
        "5xx replies per recipient reply at the selected providers: keep below 2%; "
        "MailsluiceBounceRateHigh fires at 5%.",
        kind="stat",
        width=8,
        limits=BOUNCE_LIMITS,
    ),
    Panel(
        "Complaint rate",
        "percentunit",
        ((COMPLAINT_RATE_ALL, "complaints"),),
        "Feedback-loop complaints per delivered recipient: Gmail wants < 0.1% (warning), "
        "never 0.3% (critical).",
        kind="stat",
        width=8,
        limits=COMPLAINT_LIMITS,
    ),
    Panel(
        "Deferral rate",
        "percentunit",
        ((_DEFERRALS, "deferred"),),
        "4xx replies per recipient reply: throttling; MailsluiceDeferralSpike needs 25%.",
        kind="stat",
        width=8,
        limits=DEFERRAL_LIMITS,
    ),
    Panel(
        "Outcomes",
        "ops",
        ((rate(_PROVIDER_RECIPIENTS, PP, "result"), "{{result}}"),),
        "Recipient replies at the selected providers per second, stacked: delivered (2xx), "
        "deferred (4xx), bounced (5xx).",
        colors=meaning("delivered", "deferred", "bounced"),
        stack=True,
    ),
    Panel(
        "Recipients by provider",
        "ops",
        ((rate(_PROVIDER_RECIPIENTS, PP, "provider"), "{{provider}}"),),
        "Recipient replies per second by provider, whatever the outcome.",
    ),
    Panel(
        "Bounce rate by provider",
        "percentunit",
        ((ratio(_PROVIDER_RECIPIENTS, PP, "bounced", "provider"), "{{provider}}"),),
        "Share of a provider's recipient replies that were 5xx; dashed lines at 2% and 5%.",
        limits=BOUNCE_LIMITS,
    ),
    Panel(
        "Complaint rate by provider",
        "percentunit",
        ((COMPLAINT_RATE, "{{provider}}"),),
        "Feedback-loop complaints per delivered recipient; dashed lines at Gmail's 0.1% and 0.3%.",
        limits=COMPLAINT_LIMITS,
    ),
    Panel(
        "Deferral rate by provider",
        "percentunit",
        ((ratio(_PROVIDER_RECIPIENTS, PP, "deferred", "provider"), "{{provider}}"),),
        "Share of a provider's recipient replies that were 4xx; dashed lines at 10% and 25%.",
        limits=DEFERRAL_LIMITS,
    ),
    Panel(
        "Outbound SMTP latency by stage (p95)",
        "s",
        ((quantile(0.95, "mailsluice_delivery_smtp_seconds", "", "stage"), "{{stage}}"),),
        "Delivery workers to remote MX servers: TCP connect, STARTTLS handshake, one mail "
        "transaction (all pools).",
    ),
)

DELIVERABILITY = (
    *JUDGED,
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
    *SHAPING,
    *ENGAGEMENT,
)
