"""Prometheus metrics of delivery workers. Labels come from closed sets (pool names are
configuration, results and tiers are fixed); never addresses, message ids or raw domains."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ATTEMPT_RESULTS = ("delivered", "deferred", "bounced", "expired")

ATTEMPTS = Counter(
    "mailsluice_delivery_attempts_total",
    "Delivery attempts of queue records, by overall result (worst recipient outcome).",
    ["pool", "result"],
)
RECIPIENTS = Counter(
    "mailsluice_delivery_recipients_total",
    "Recipient outcomes of delivery attempts.",
    ["pool", "result"],
)
INFLIGHT = Gauge(
    "mailsluice_delivery_inflight_messages",
    "Queue records held in memory by the worker (queued or sending).",
    ["pool"],
)
SEND_SECONDS = Histogram(
    "mailsluice_delivery_send_seconds",
    "Time of one transport send (one record, all its recipients).",
    ["pool"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
RETRIES = Counter(
    "mailsluice_delivery_retries_total",
    "Records sent to a retry delay topic (after a failure or when throttled).",
    ["pool", "tier", "cause"],
)
DUPLICATES_SKIPPED = Counter(
    "mailsluice_delivery_duplicates_skipped_total",
    "Recipients of redelivered records not sent again because they were already delivered.",
    ["pool"],
)
UNDECODABLE = Counter(
    "mailsluice_delivery_undecodable_records_total",
    "Queue records skipped because their envelope could not be decoded.",
    ["pool"],
)
COMMITS = Counter(
    "mailsluice_delivery_commits_total",
    "Offset commits of the delivery consumer, by outcome.",
    ["pool", "result"],
)
COMMIT_OFFSET = Gauge(
    "mailsluice_delivery_commit_offset",
    "Last committed offset, per partition number of the pool's queue topic.",
    ["pool", "partition"],
)
PAUSED = Gauge(
    "mailsluice_delivery_paused",
    "1 while the worker paused fetching because its memory bound is reached.",
    ["pool"],
)
DSN_SENT = Counter(
    "mailsluice_delivery_dsn_total",
    "Bounce messages (DSN) queued back to envelope senders.",
    ["pool"],
)
MOVER_MOVED = Counter(
    "mailsluice_retry_mover_moved_total",
    "Retry records moved back to their pool's queue topic.",
    ["tier"],
)
MOVER_WAITING = Gauge(
    "mailsluice_retry_mover_waiting_records",
    "Retry records fetched and held until their not_before.",
)
