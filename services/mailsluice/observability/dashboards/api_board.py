"""HTTP API and webhooks dashboard: requests and their answers, recipients taken, the wait for
Kafka, and what becomes of the tenants' webhook batches."""

from __future__ import annotations

from mailsluice.observability.dashboards.panels import Panel, meaning, percentiles, rate

API = (
    Panel(
        "API requests by route and code",
        "reqps",
        ((rate("mailsluice_api_requests_total", "", "route, code"), "{{route}} {{code}}"),),
        "5xx are the API's own failures (503: Kafka did not acknowledge in time); 429 is a "
        "tenant over its quota.",
        colors=((r"(.* )?5\d\d", "red"), (r"(.* )?429", "orange")),
    ),
    Panel(
        "Recipients of POST /v1/messages by result",
        "ops",
        ((rate("mailsluice_api_recipients_total", "", "result"), "{{result}}"),),
        "accepted: queued with Kafka's acks; suppressed: held by a suppression scope; rejected: "
        "its rendering failed or its message was too big. Stacked.",
        colors=meaning("accepted", "suppressed", "rejected"),
        stack=True,
    ),
    Panel(
        "Wait for Kafka's acknowledgement",
        "s",
        percentiles("mailsluice_api_publish_seconds", ""),
        "From a request's first record sent to the last acknowledgement: the 202 waits for it.",
    ),
    Panel(
        "Idempotent replays",
        "ops",
        ((rate("mailsluice_api_idempotent_replays_total", ""), "replays"),),
        "POSTs answered from their Idempotency-Key's first answer, sending nothing.",
    ),
    Panel(
        "Webhook batches by result",
        "ops",
        ((rate("mailsluice_webhooks_batches_total", "", "result"), "{{result}}"),),
        "retried: written to a delay tier after a failure; dead: given up (24 h of retries, "
        "SSRF refusal, endpoint paused or gone) — `mailsluice webhooks dead` lists them. Stacked.",
        colors=meaning("delivered", "retried", "dead"),
        stack=True,
    ),
    Panel(
        "Webhook POST time",
        "s",
        percentiles("mailsluice_webhooks_attempt_seconds", ""),
    ),
    Panel(
        "Webhook backlog",
        "short",
        (
            ("sum (mailsluice_webhooks_buffered_records)", "buffered"),
            ("sum (mailsluice_webhooks_waiting_records)", "waiting to retry"),
        ),
        "Events read but not yet sent; failed batches held until due.",
    ),
    Panel(
        "Paused webhook endpoints",
        "short",
        (("max (mailsluice_webhooks_endpoints_paused)", "endpoints paused"),),
        "Endpoints paused (by a tenant or after failing too long): their batches go to the "
        "dead letters.",
        soft_max=1.0,
    ),
)
