"""Overview dashboard: traffic in and out, the rates providers judge, queue lag and retries."""

from __future__ import annotations

from mailsluice.observability.dashboards.panels import (
    BOUNCE_LIMITS,
    DEFERRAL_LIMITS,
    POOL,
    Panel,
    meaning,
    percentiles,
    rate,
    ratio,
)

_RECIPIENTS = "mailsluice_delivery_recipients_total"

OVERVIEW = (
    Panel(
        "Bounce rate",
        "percentunit",
        ((ratio(_RECIPIENTS, POOL, "bounced"), "bounced"),),
        "Share of recipient outcomes that bounced (5xx); providers mind above 2%, "
        "MailsluiceBounceRateHigh fires at 5%.",
        kind="stat",
        width=8,
        limits=BOUNCE_LIMITS,
    ),
    Panel(
        "Deferral rate",
        "percentunit",
        ((ratio(_RECIPIENTS, POOL, "deferred"), "deferred"),),
        "Share of recipient outcomes deferred (4xx, retried later).",
        kind="stat",
        width=8,
        limits=DEFERRAL_LIMITS,
    ),
    Panel(
        "Delivered",
        "ops",
        ((rate(_RECIPIENTS, f'{POOL}, result="delivered"'), "delivered"),),
        "Recipients accepted by remote MX servers per second.",
        kind="stat",
        width=8,
    ),
    Panel(
        "Traffic in: messages and recipients accepted",
        "ops",
        (
            (rate("mailsluice_ingest_transactions_total", 'result="queued"'), "messages"),
            (rate("mailsluice_ingest_recipients_total", 'result="accepted"'), "recipients"),
        ),
        "What ingest queued to Kafka, per second.",
    ),
    Panel(
        "Traffic out: recipient outcomes",
        "ops",
        ((rate(_RECIPIENTS, POOL, "result"), "{{result}}"),),
        "Recipient outcomes of delivery attempts per second, stacked (deferred ones are "
        "retried; expired ones were deferred until they expired).",
        colors=meaning("delivered", "deferred", "bounced", "expired"),
        stack=True,
    ),
    Panel(
        "Bounce rate over time",
        "percentunit",
        ((ratio(_RECIPIENTS, POOL, "bounced"), "bounced"),),
        "Share of recipient outcomes that bounced; dashed lines at 2% and 5%.",
        colors=meaning("bounced"),
        limits=BOUNCE_LIMITS,
    ),
    Panel(
        "Deferral rate over time",
        "percentunit",
        ((ratio(_RECIPIENTS, POOL, "deferred"), "deferred"),),
        "Share of recipient outcomes deferred; dashed lines at 10% and 25%.",
        colors=meaning("deferred"),
        limits=DEFERRAL_LIMITS,
    ),
    Panel(
        "Delivery rate by pool",
        "ops",
        ((rate(_RECIPIENTS, f'{POOL}, result="delivered"', "pool"), "{{pool}}"),),
        "Recipients accepted by remote MX servers per second.",
    ),
    Panel(
        "Queue lag by pool",
        "short",
        (("sum by (pool) (mailsluice_delivery_queue_lag_records{" + POOL + "})", "{{pool}}"),),
        "Records in the pool's queue topic not yet finished by its workers.",
    ),
    Panel(
        "Time in queue (p50, p95)",
        "s",
        percentiles("mailsluice_delivery_queue_age_seconds", POOL, (0.5, 0.95)),
        "Age of a record when a delivery attempt ends.",
    ),
    Panel(
        "Retries by tier",
        "ops",
        ((rate("mailsluice_delivery_retries_total", POOL, "tier, cause"), "{{tier}} {{cause}}"),),
        "Records sent to a retry delay topic per second.",
    ),
    Panel(
        "Retry backlog by tier",
        "short",
        (
            ("sum by (tier) (mailsluice_retry_mover_backlog_records)", "{{tier}}"),
            ("sum(mailsluice_retry_mover_waiting_records)", "fetched, waiting until due"),
        ),
        "Retry records in each delay tier topic, and those the mover holds until due.",
    ),
)
