"""Prometheus metrics shared across components, and the label helpers that keep label values in
closed sets. Names are mailsluice_<component>_<thing>_<unit|total>; a label value is a pool or
provider name from configuration, or one of the fixed tuples below — never an address, a message
id or a raw domain (a domain that is not a provider counts as `other`)."""

from __future__ import annotations

import contextlib
import re
import time
import weakref
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
COMPLAINTS = Counter(
    "mailsluice_delivery_complaints_total",
    "Spam complaints (feedback loop reports) by provider.",
    ["pool", "provider"],
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
for _result in RECONCILE_RESULTS:
    RECONCILES.labels(_result)


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
