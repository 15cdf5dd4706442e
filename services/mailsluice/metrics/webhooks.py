"""Metrics of the webhook sender: batches and events by what became of them, the time of one
POST, what waits, and paused endpoints. No tenant or endpoint labels (they are not a closed
set); `mailsluice webhooks status` names the endpoints."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from mailsluice.metrics.labels import TIME_BUCKETS


class Webhooks:
    """The webhook sender (`... import Webhooks as webhook_metrics`)."""

    # delivered: a 2xx; retried: failed, written to a delay tier; dead: given up (retried for
    # the whole schedule, refused by the SSRF check, endpoint paused, gone or removed)
    RESULTS = ("delivered", "retried", "dead")

    BATCHES = Counter(
        "mailsluice_webhooks_batches_total",
        "Webhook batches by what became of each attempt (or of a batch dead without one).",
        ["result"],
    )
    EVENTS = Counter(
        "mailsluice_webhooks_events_total",
        "Events in those batches, by the same result.",
        ["result"],
    )
    ATTEMPT_SECONDS = Histogram(
        "mailsluice_webhooks_attempt_seconds",
        "Time of one webhook POST, from connecting to the whole answer (or the failure).",
        buckets=TIME_BUCKETS,
    )
    BUFFERED = Gauge(
        "mailsluice_webhooks_buffered_records",
        "Event items read from mailsluice.events whose batch is not sent (or re-queued) yet.",
    )
    WAITING = Gauge(
        "mailsluice_webhooks_waiting_records",
        "Delay-tier records (failed batches) this sender holds until their next attempt is due.",
    )
    PAUSED = Gauge(
        "mailsluice_webhooks_endpoints_paused",
        "Endpoints paused (mailsluice.webhooks.status), all tenants together.",
    )


for _result in Webhooks.RESULTS:
    Webhooks.BATCHES.labels(_result)
    Webhooks.EVENTS.labels(_result)
