"""Overview dashboard: traffic in and out, queue lag and retries per pool."""

from __future__ import annotations

from mailsluice.observability.dashboards.panels import POOL, Panel, percentiles, rate, ratio

OVERVIEW = (
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
        ((rate("mailsluice_delivery_recipients_total", POOL, "result"), "{{result}}"),),
        "Recipient outcomes of delivery attempts per second (deferred ones are retried).",
    ),
    Panel(
        "Delivery rate by pool",
        "ops",
        (
            (
                rate("mailsluice_delivery_recipients_total", f'{POOL}, result="delivered"', "pool"),
                "{{pool}}",
            ),
        ),
        "Recipients accepted by remote MX servers per second.",
    ),
    Panel(
        "Bounce and deferral rates",
        "percentunit",
        (
            (ratio("mailsluice_delivery_recipients_total", POOL, "bounced"), "bounced"),
            (ratio("mailsluice_delivery_recipients_total", POOL, "deferred"), "deferred"),
        ),
        "Share of recipient outcomes that bounced or were deferred.",
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
