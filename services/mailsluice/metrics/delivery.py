"""Metrics of delivery workers: attempts and outcomes by provider, time in queue, SMTP latency,
the worker's memory and commits, and queue lag read at scrape time."""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from mailsluice.contracts.suppressions import ScopeKind
from mailsluice.metrics.labels import AGE_BUCKETS, TIME_BUCKETS, provider_label, status_class

SMTP_STAGES = ("connect", "tls", "transaction")

# --- delivery: outcomes by provider ------------------------------------------------------------

PROVIDER_RECIPIENTS = Counter(
    "mailsluice_delivery_provider_recipients_total",
    "Recipient replies of delivery attempts by provider and source stream: delivered (2xx), "
    "deferred (4xx) or bounced (5xx), as the remote (or routing) answered.",
    ["pool", "provider", "source", "result"],
)
DEFERRALS = Counter(
    "mailsluice_delivery_deferrals_total",
    "Deferred recipients by provider and the RFC 3463 status class of the reply (reason).",
    ["pool", "provider", "reason"],
)
BOUNCES = Counter(
    "mailsluice_delivery_bounces_total",
    "Bounced recipients by provider and the RFC 3463 status class of the reply.",
    ["pool", "provider", "class"],
)
QUEUE_AGE_SECONDS = Histogram(
    "mailsluice_delivery_queue_age_seconds",
    "Time in queue: age of a record (since ingest accepted it) when a delivery attempt ends.",
    ["pool"],
    buckets=AGE_BUCKETS,
)
SMTP_SECONDS = Histogram(
    "mailsluice_delivery_smtp_seconds",
    "Outbound SMTP latency by stage: TCP connect, STARTTLS handshake, one mail transaction.",
    ["stage"],
    buckets=TIME_BUCKETS,
)

for _stage in SMTP_STAGES:
    SMTP_SECONDS.labels(_stage)


class ReplyLike(Protocol):
    @property
    def code(self) -> int: ...
    @property
    def enhanced(self) -> str: ...


class EnvelopeLike(Protocol):
    @property
    def pool(self) -> str: ...
    @property
    def routing_key(self) -> str: ...
    @property
    def stream(self) -> str: ...
    @property
    def received_at(self) -> float: ...


def count_attempt(env: EnvelopeLike, replies: Sequence[ReplyLike], now: float) -> None:
    """Count one delivery attempt's recipient replies by provider, and its time in queue."""
    provider = provider_label(env.routing_key)
    for reply in replies:
        if 200 <= reply.code < 300:
            result = "delivered"
        elif reply.code >= 500:
            result = "bounced"
            BOUNCES.labels(env.pool, provider, status_class(reply.enhanced)).inc()
        else:
            result = "deferred"
            DEFERRALS.labels(env.pool, provider, status_class(reply.enhanced)).inc()
        PROVIDER_RECIPIENTS.labels(env.pool, provider, env.stream, result).inc()
    QUEUE_AGE_SECONDS.labels(env.pool).observe(max(0.0, now - env.received_at))


# --- queue lag, read from the delivery consumers at scrape time ---------------------------------


def consumer_lag(worker: Any) -> Iterator[tuple[int, int]]:
    """(partition, lag) for each partition a delivery worker owns: the log end offset minus the
    offset the worker would commit (its lowest unfinished record). Reads only cached client
    state (aiokafka's highwater from the last fetch), so a scrape never waits on Kafka."""
    consumer = getattr(worker, "consumer", None)
    if consumer is None:
        return
    for tp in consumer.assignment():
        end = consumer.highwater(tp)
        if end is None:
            continue
        done = worker.ledger.partition(tp).committable()
        yield tp.partition, max(0, end - (end if done is None else done))


class QueueLagCollector(Collector):
    """Exports mailsluice_delivery_queue_lag_records for every tracked delivery worker."""

    def __init__(self) -> None:
        self._workers: weakref.WeakSet[Any] = weakref.WeakSet()

    def track(self, worker: Any) -> None:
        self._workers.add(worker)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "mailsluice_delivery_queue_lag_records",
            "Records of the pool's queue topic the worker has not finished yet (log end offset "
            "minus the offset it would commit), per partition the worker owns.",
            labels=["pool", "partition"],
        )
        for worker in list(self._workers):
            try:
                lags = list(consumer_lag(worker))
            except Exception:  # a consumer mid-shutdown must not break /metrics
                continue
            for partition, lag in lags:
                family.add_metric([str(worker.pool), str(partition)], float(lag))
        yield family


QUEUE_LAG = QueueLagCollector()
REGISTRY.register(QUEUE_LAG)


# --- delivery workers ---------------------------------------------------------------------------


class Delivery:
    """Metrics of delivery workers (`... import Delivery as m`; the retry mover's are in
    metrics/retry.py). Labels come from closed sets (pool names are configuration, results and
    tiers are fixed)."""

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
    CONNECTION_RATE_REQUEUES = Counter(
        "mailsluice_delivery_connection_rate_requeues_total",
        "Sends queued again because the destination's connection rate allowed no new "
        "connection (local shaping; not counted as attempts).",
        ["pool"],
    )
    HELD_REQUEUES = Counter(
        "mailsluice_delivery_held_requeues_total",
        "Sends the destination deferred for its own limits (rate, connections, messages per "
        "connection, reputation, block): the message waits for capacity again, not counted as "
        "an attempt.",
        ["pool"],
    )
    DUPLICATES_SKIPPED = Counter(
        "mailsluice_delivery_duplicates_skipped_total",
        "Recipients not sent again because they were already delivered (a redelivered record, "
        "or a client's second copy of a message).",
        ["pool"],
    )
    DUPLICATE_WAITS = Counter(
        "mailsluice_delivery_duplicate_waits_total",
        "Records queued again because another attempt was sending the same message to the same "
        "recipient (local; not counted as attempts).",
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
    SMTP_CONNECTIONS = Counter(
        "mailsluice_delivery_smtp_connections_total",
        "Outbound SMTP sessions: opened, reused from the pool, or failed before MAIL FROM.",
        ["result"],
    )
    # set by delivery/transport/connection_pool.py
    CONNECTIONS_OPEN = Gauge(
        "mailsluice_delivery_connections_open",
        "Outbound SMTP connections open now (sending or idle in the pool), by the provider of "
        "the destination they were opened for.",
        ["pool", "provider"],
    )
    # --- suppression at send time (delivery/worker/suppressed.py) ---
    SCOPE_KINDS = tuple(kind.value for kind in ScopeKind)
    SUPPRESSED = Counter(
        "mailsluice_delivery_suppressed_total",
        "Recipients not sent because the suppression list holds them for the message (checked "
        "before every attempt), by the kind of scope that matched; each gets a `suppressed` "
        "event, never a DSN.",
        ["pool", "scope"],
    )


# --- open and click tracking at send time (delivery/worker/tracking.py) ---------------------

# "tracked", or why a copy went out as it came (tracking.rewrite.Unchanged; a test keeps the
# two in step, since shared metrics import no tracking code).
TRACKING_OUTCOMES = ("tracked", "malformed", "no_html", "charset", "transfer_encoding")
TRACKING = Counter(
    "mailsluice_delivery_tracking_total",
    "Recipient copies the delivery worker rewrote for open and click tracking (tracked), or "
    "left as they came because the rewrite could not be done safely (the reason).",
    ["outcome"],
)
for _outcome in TRACKING_OUTCOMES:
    TRACKING.labels(_outcome)
