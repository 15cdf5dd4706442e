"""Every Prometheus metric of Mailsluice, and the label helpers that keep label values in closed
sets. The older component metrics are grouped in the namespaces Ingest, Delivery and Shaping at
the end. Names are mailsluice_<component>_<thing>_<unit|total>; a label value is a pool or
provider name from configuration, or one of the fixed tuples below — never an address, a message
id or a raw domain (a domain that is not a provider counts as `other`)."""

from __future__ import annotations

import contextlib
import re
import time
import weakref
from collections import Counter as Tally
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

OTHER = "other"
OUTCOME_RESULTS = ("delivered", "deferred", "bounced")
# RFC 3463 status class and subject ("4.7" = security/policy), which bounds the label values.
STATUS_CLASSES = (*(f"{c}.{s}" for c in (4, 5) for s in range(8)), OTHER)
SMTP_STAGES = ("connect", "tls", "transaction")
DNS_RTYPES = ("MX",)
DNS_FAILURES = ("nxdomain", "no_answer", "timeout", "servfail", "error")
RECONCILE_RESULTS = ("ok", "error")
WORKER_KINDS = ("desired", "ready")

_PROVIDER_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_STATUS = re.compile(r"^([245])\.(\d{1,3})\.\d{1,3}$")

TIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
AGE_BUCKETS = (1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400, 259200)

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

# --- DNS ---------------------------------------------------------------------------------------

DNS_SECONDS = Histogram(
    "mailsluice_dns_lookup_seconds",
    "Time of one DNS lookup, by record type.",
    ["rtype"],
    buckets=TIME_BUCKETS,
)
DNS_FAILURES_TOTAL = Counter(
    "mailsluice_dns_lookup_failures_total",
    "DNS lookups that gave no usable answer, by record type and reason.",
    ["rtype", "reason"],
)

# --- operator ----------------------------------------------------------------------------------

RECONCILES = Counter(
    "mailsluice_operator_reconciles_total",
    "SendingPool reconciliations, by result (error: the round raised).",
    ["result"],
)
WORKERS = Gauge(
    "mailsluice_operator_workers",
    "Delivery workers of a SendingPool: desired (set by the operator) and ready.",
    ["pool", "kind"],
)

for _stage in SMTP_STAGES:
    SMTP_SECONDS.labels(_stage)


def init_operator() -> None:
    """Start the operator's reconcile counters at zero; only the operator process calls this,
    so other components do not export an operator series."""
    for result in RECONCILE_RESULTS:
        RECONCILES.labels(result)


def provider_label(routing_key: str) -> str:
    """The provider a routing key belongs to ("google#3" -> "google"); a raw domain -> other.
    Provider names cannot contain dots, domains always do."""
    base = routing_key.partition("#")[0]
    return base if _PROVIDER_NAME.match(base) else OTHER


def status_class(enhanced: str) -> str:
    """The RFC 3463 class.subject of an enhanced status code ("4.7.1" -> "4.7"), else other."""
    found = _STATUS.match(enhanced or "")
    if found is None or int(found.group(2)) > 7:
        return OTHER
    return f"{found.group(1)}.{found.group(2)}"


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


class Stopwatch:
    """`with Stopwatch(SMTP_SECONDS.labels("connect")):` observes the block's duration."""

    def __init__(self, histogram: Any) -> None:
        self._histogram = histogram
        self._started = 0.0

    def __enter__(self) -> Stopwatch:
        self._started = time.monotonic()
        return self

    def __exit__(self, *_: object) -> None:
        self._histogram.observe(time.monotonic() - self._started)


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


def retry_backlog(mover: Any) -> dict[str, int]:
    """Records in each retry tier topic not yet moved back, for the partitions a retry mover
    owns: the log end offset minus the first record it holds (or minus the log end offset
    when it holds none of that partition; it pauses a partition while holding records)."""
    consumer = getattr(mover, "consumer", None)
    backlog: dict[str, int] = {}
    if consumer is None:
        return backlog
    held = getattr(mover, "_held", {})
    for tp in consumer.assignment():
        end = consumer.highwater(tp)
        if end is None:
            continue
        queue = held.get(tp)
        first = queue[0].record.offset if queue else end
        tier = tp.topic.rsplit(".", 1)[-1]
        backlog[tier] = backlog.get(tier, 0) + max(0, end - first)
    return backlog


class RetryBacklogCollector(Collector):
    """Exports mailsluice_retry_mover_backlog_records for every tracked retry mover."""

    def __init__(self) -> None:
        self._movers: weakref.WeakSet[Any] = weakref.WeakSet()

    def track(self, mover: Any) -> None:
        self._movers.add(mover)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "mailsluice_retry_mover_backlog_records",
            "Retry records waiting in each retry tier topic (fetched and held, or not fetched "
            "yet), for the tier partitions this retry mover owns.",
            labels=["tier"],
        )
        totals: dict[str, int] = {}
        for mover in list(self._movers):
            try:
                found = retry_backlog(mover)
            except Exception:  # a consumer mid-shutdown must not break /metrics
                continue
            for tier, count in found.items():
                totals[tier] = totals.get(tier, 0) + count
        for tier, count in sorted(totals.items()):
            family.add_metric([tier], float(count))
        yield family


RETRY_BACKLOG = RetryBacklogCollector()
REGISTRY.register(RETRY_BACKLOG)


def record_workers(pool: str, status: dict[str, Any]) -> None:
    """Desired and ready workers of a SendingPool from the status the operator writes."""
    if "replicas" in status:
        WORKERS.labels(pool, "desired").set(int(status["replicas"]))
    if "readyReplicas" in status:
        WORKERS.labels(pool, "ready").set(int(status["readyReplicas"] or 0))


def forget_pool(pool: str) -> None:
    """Drop a deleted SendingPool's series."""
    for kind in WORKER_KINDS:
        with contextlib.suppress(KeyError):
            WORKERS.remove(pool, kind)


# --- ingest -------------------------------------------------------------------------------------


class Ingest:
    """Metrics of the SMTP ingest (`from mailsluice.metrics import Ingest as metrics`)."""

    CONNECTIONS = Counter("mailsluice_ingest_connections_total", "SMTP connections accepted.")
    CONNECTIONS_OPEN = Gauge("mailsluice_ingest_connections_open", "SMTP connections now open.")
    TRANSACTIONS = Counter(
        "mailsluice_ingest_transactions_total",
        "Message transactions finished at DATA, by result.",
        ["result"],
    )
    TRANSACTION_RESULTS = ("queued", "tempfail", "rejected", "too_big", "aborted")
    RECIPIENTS = Counter(
        "mailsluice_ingest_recipients_total",
        "Recipients judged at RCPT, by result (accepted/rejected) and reject reason.",
        ["result", "reason"],
    )
    BYTES = Counter("mailsluice_ingest_bytes_total", "Bytes of messages queued to Kafka.")
    PUBLISH_SECONDS = Histogram(
        "mailsluice_ingest_kafka_publish_seconds",
        "Time from the first send to the last Kafka acknowledgement of a message.",
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30),
    )
    TRANSACTION_SECONDS = Histogram(
        "mailsluice_ingest_transaction_seconds",
        "Time from MAIL FROM to the reply after DATA.",
        buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
    )
    EVENTS_FAILED = Counter(
        "mailsluice_ingest_events_failed_total", "Events that could not be written to Kafka."
    )
    PROTOCOL_VIOLATIONS = Counter(
        "mailsluice_ingest_protocol_violations_total",
        "Connections closed for protocol violations, by kind.",
        ["kind"],
    )
    VIOLATION_KINDS = ("early_talker", "pipelining", "too_many_errors", "too_many_messages")


for _result in Ingest.TRANSACTION_RESULTS:
    Ingest.TRANSACTIONS.labels(_result)
for _kind in Ingest.VIOLATION_KINDS:
    Ingest.PROTOCOL_VIOLATIONS.labels(_kind)


# --- delivery workers and the retry mover -------------------------------------------------------


class Delivery:
    """Metrics of delivery workers and the retry mover (`... import Delivery as m`). Labels
    come from closed sets (pool names are configuration, results and tiers are fixed)."""

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
    SMTP_CONNECTIONS = Counter(
        "mailsluice_delivery_smtp_connections_total",
        "Outbound SMTP sessions: opened, reused from the pool, or failed before MAIL FROM.",
        ["result"],
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

    # --- connections open per destination class (issue 6; set by delivery.connection_pool) ---
    CONNECTIONS_OPEN = Gauge(
        "mailsluice_delivery_connections_open",
        "Outbound SMTP connections open now (sending or idle in the pool), by the provider of "
        "the destination they were opened for.",
        ["pool", "provider"],
    )
    # --- end of connections open per destination class ---


# --- shaping and warm-up ------------------------------------------------------------------------


class Shaping:
    """Metrics of the shaping engine (`... import Shaping as shaping_metrics`). Pool, provider
    and rule names are configuration, states and actions are fixed; destinations that are raw
    domains are counted, never named."""

    STATES = ("normal", "throttled", "recovering", "suspended")

    DESTINATIONS = Gauge(
        "mailsluice_shaping_destinations",
        "Destinations known to the worker, by adaptive state.",
        ["pool", "state"],
    )
    BACKOFF_TRIGGERS = Counter(
        "mailsluice_shaping_backoff_triggers_total",
        "Adaptive backoff rules that fired, by rule and action.",
        ["pool", "rule", "action"],
    )
    PROVIDER_RATE = Gauge(
        "mailsluice_shaping_provider_rate_messages_per_second",
        "Current allowed message rate of provider destinations (after backoff).",
        ["pool", "provider"],
    )
    WARMUP_DAY = Gauge("mailsluice_warmup_day", "Day of the pool's warm-up (1 = start).", ["pool"])
    WARMUP_CAP = Gauge(
        "mailsluice_warmup_cap_messages",
        "This worker's warm-up cap for the current period (-1: warm-up complete, no cap).",
        ["pool", "scope", "period"],
    )
    WARMUP_USED = Gauge(
        "mailsluice_warmup_used_messages",
        "Messages counted against the warm-up cap in the current period by this worker.",
        ["pool", "scope", "period"],
    )

    @staticmethod
    def export(shaper: Any, now: float) -> None:
        """Update the gauges from a PolicyShaper's state (call periodically); drains fired
        rules."""
        pool = shaper.pool
        for _key, fired in shaper.fired:
            Shaping.BACKOFF_TRIGGERS.labels(pool, fired.rule, fired.action).inc()
        shaper.fired.clear()
        states: Tally[str] = Tally()
        for key in set(shaper.limiters.keys()) | set(shaper.adaptive.keys()):
            state = shaper.adaptive.peek(key)
            states[state.mode(now) if state is not None else "normal"] += 1
            provider = shaper.provider(key)
            if provider is not None and provider == key.partition("#")[0]:
                rate = shaper.limiters.get(key, now).current_rate()
                Shaping.PROVIDER_RATE.labels(pool, key).set(rate)
        for state_name in Shaping.STATES:
            Shaping.DESTINATIONS.labels(pool, state_name).set(states[state_name])
        if shaper.warmup is not None:
            status = shaper.warmup.status(shaper.wall())
            Shaping.WARMUP_DAY.labels(pool).set(status.day)
            for scope, info in status.scopes.items():
                cap = -1 if info.cap is None else info.cap
                Shaping.WARMUP_CAP.labels(pool, scope, info.period).set(cap)
                Shaping.WARMUP_USED.labels(pool, scope, info.period).set(info.used)


# --- delivery worker: shaping delay, suspensions, warm-up overflow (issues 4 and 6) -------------


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
        "Destination suspensions, by the backoff rule that suspended it (`operator`: a "
        "`mailsluice destinations suspend` command).",
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


# --- feedback-loop complaints at ingest (FBL intake, services/ingest/feedback.py) ---------------

# Why a message to a feedback-loop address was refused (550 5.6.0).
FEEDBACK_REJECT_REASONS = ("not_report", "malformed", "not_complaint", "no_recipient")

INGEST_COMPLAINTS = Counter(
    "mailsluice_ingest_complaints_total",
    "Spam complaints received as feedback-loop (ARF) reports and written to the events topic, "
    "by the original message's pool (`other` when the report names none of ours) and the "
    "complaining recipient's provider.",
    ["pool", "provider"],
)
INGEST_FEEDBACK_REJECTED = Counter(
    "mailsluice_ingest_feedback_rejected_total",
    "Messages to a feedback-loop address refused as no usable complaint report, by reason.",
    ["reason"],
)
for _reason in FEEDBACK_REJECT_REASONS:
    INGEST_FEEDBACK_REJECTED.labels(_reason)


# --- retry mover: held records, early releases, lateness (retry mover helper) ------------------
# Labels: tier only (contracts.RETRY_TIERS). Updated by delivery/retry_mover.py.

RETRY_MOVER_HELD = Gauge(
    "mailsluice_retry_mover_held_records",
    "Retry records the retry mover holds in memory until due (or while moving them), by tier.",
    ["tier"],
)
RETRY_MOVER_RELEASED = Counter(
    "mailsluice_retry_mover_released_total",
    "Retry records moved before their due time because of a retry-now command, by tier.",
    ["tier"],
)
RETRY_MOVER_LATENESS = Histogram(
    "mailsluice_retry_mover_lateness_seconds",
    "How long after its not_before a retry record's copy was acknowledged on its queue topic "
    "(records released early by retry-now are not counted), by tier.",
    ["tier"],
    buckets=TIME_BUCKETS,
)


# --- stream processors (services/streams) -------------------------------------------------------


class Streams:
    """Metrics of the stream processors (`... import Streams as streams_metrics`). Counters of
    this process (Prometheus sums the replicas); the per-day numbers live in the faust table."""

    EVENT_TYPES = (
        "reception",
        "rejection",
        "delivery",
        "transient_failure",
        "bounce",
        "expiration",
        "suppression",
        "complaint",
    )
    SUPPRESSION_REASONS = ("hard-bounce", "complaint", "repeated-soft-bounce")
    AGENTS = ("route", "judge")

    EVENTS = Counter(
        "mailsluice_streams_events_total",
        "Events read from mailsluice.events by the stream processors, by pool (`other` when the "
        "event names none) and event type.",
        ["pool", "type"],
    )
    SUPPRESSIONS = Counter(
        "mailsluice_streams_suppressions_total",
        "Suppression records the stream processors wrote to mailsluice.suppressions, by reason.",
        ["reason"],
    )
    ERRORS = Counter(
        "mailsluice_streams_errors_total",
        "Events a stream processor agent skipped after an error (undecodable or a bug), by agent.",
        ["agent"],
    )

    @staticmethod
    def pool_label(pool: str) -> str:
        """A pool name as a label value; empty or not a valid name -> other."""
        return pool if _PROVIDER_NAME.match(pool or "") else OTHER

    @staticmethod
    def type_label(event_type: str) -> str:
        return event_type if event_type in Streams.EVENT_TYPES else OTHER


for _reason in Streams.SUPPRESSION_REASONS:
    Streams.SUPPRESSIONS.labels(_reason)
for _agent in Streams.AGENTS:
    Streams.ERRORS.labels(_agent)
