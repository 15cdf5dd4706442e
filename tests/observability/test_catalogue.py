"""The metric catalogue matches the registered metrics, and metric names and labels follow the
project's rules; the label helpers keep values in closed sets."""

from __future__ import annotations

import re
from types import SimpleNamespace

from aiokafka import TopicPartition
from prometheus_client import REGISTRY
from support.metrics import sample
from support.paths import REPO

from mailsluice.metrics.delivery import QUEUE_LAG, count_attempt
from mailsluice.metrics.labels import (
    OTHER,
    OUTCOME_RESULTS,
    STATUS_CLASSES,
    provider_label,
    status_class,
)
from mailsluice.metrics.operator import forget_pool, record_workers
from mailsluice.metrics.retry import retry_backlog
from mailsluice.observability import catalogue as metrics_doc

DOC = REPO / "docs" / "metrics.md"
NAME = re.compile(
    r"^mailsluice_(ingest|delivery|shaping|warmup|retry_mover|dns|operator|streams|unsubscribe"
    r"|webhooks|api|tracker"
    r")_[a-z_]+$"
)
UNITS = (
    "_total",
    "_seconds",
    "_records",
    "_messages",
    "_bytes",
    "_open",
    "_offset",
    "_paused",
    "_per_second",
    "_day",
    "_workers",
    "_destinations",
    "_connections",
)


def test_catalogue_is_current() -> None:
    assert DOC.read_text() == metrics_doc.render(), (
        "docs/metrics.md is stale: run "
        "`python -m mailsluice.observability.catalogue > docs/metrics.md`"
    )


def test_names_and_labels_follow_the_rules() -> None:
    found = list(metrics_doc.families())
    assert len(found) >= 35
    for family, labels in found:
        name = metrics_doc.exposed_name(family)
        assert NAME.match(name), name
        assert name.endswith(UNITS) or name == "mailsluice_delivery_paused", name
        assert family.documentation, name
        for label in labels:
            assert metrics_doc.label_values(family.name, label)
            # Labels that could carry an address, a message id or a domain are never used.
            assert label not in ("domain", "recipient", "sender", "queue_id", "address", "host")


def test_provider_label_and_status_class_are_closed() -> None:
    assert provider_label("google") == "google"
    assert provider_label("google#3") == "google"
    assert provider_label("example.com") == OTHER
    assert provider_label("UPPER.example") == OTHER
    assert status_class("4.7.1") == "4.7"
    assert status_class("5.1.1") == "5.1"
    assert status_class("4.9.0") == OTHER
    assert status_class("") == OTHER
    assert set(STATUS_CLASSES) >= {"4.0", "5.7", OTHER}


def test_count_attempt_counts_by_provider_and_time_in_queue() -> None:
    env = SimpleNamespace(pool="doc-pool", routing_key="rare.example", stream="bulk", received_at=0)
    replies = [
        SimpleNamespace(code=250, enhanced="2.0.0"),
        SimpleNamespace(code=450, enhanced="4.2.0"),
        SimpleNamespace(code=550, enhanced="5.1.1"),
    ]
    base = {"pool": "doc-pool", "provider": "other"}
    count_attempt(env, replies, now=30.0)
    for result in OUTCOME_RESULTS:
        labels = {**base, "source": "bulk", "result": result}
        assert sample("mailsluice_delivery_provider_recipients_total", **labels) == 1
    assert sample("mailsluice_delivery_deferrals_total", **{**base, "reason": "4.2"}) == 1
    assert sample("mailsluice_delivery_bounces_total", **{**base, "class": "5.1"}) == 1
    age = {"pool": "doc-pool", "le": "60.0"}
    assert sample("mailsluice_delivery_queue_age_seconds_bucket", **age) == 1
    assert sample("mailsluice_delivery_queue_age_seconds_bucket", **{**age, "le": "15.0"}) == 0


def test_queue_lag_reads_the_worker_state() -> None:
    tp = SimpleNamespace(partition=2)
    ledger = SimpleNamespace(partition=lambda _tp: SimpleNamespace(committable=lambda: 7))
    consumer = SimpleNamespace(assignment=lambda: [tp], highwater=lambda _tp: 10)
    worker = _Worker()
    worker.consumer, worker.ledger = consumer, ledger
    QUEUE_LAG.track(worker)
    labels = {"pool": "lag-pool", "partition": "2"}
    assert sample("mailsluice_delivery_queue_lag_records", **labels) == 3
    del worker  # tracked weakly: a stopped worker disappears from the metric
    assert sample("mailsluice_delivery_queue_lag_records", **labels) == 0


class _Worker:
    pool = "lag-pool"
    consumer: object = None
    ledger: object = None


def test_operator_workers_follow_the_status_and_go_with_the_pool() -> None:
    record_workers("op-pool", {"replicas": 3, "readyReplicas": 1})
    desired = {"pool": "op-pool", "kind": "desired"}
    assert sample("mailsluice_operator_workers", **desired) == 3
    assert sample("mailsluice_operator_workers", **{**desired, "kind": "ready"}) == 1
    forget_pool("op-pool")
    assert REGISTRY.get_sample_value("mailsluice_operator_workers", desired) is None


def test_retry_backlog_per_tier() -> None:
    tp1 = TopicPartition("mailsluice.retry.1m", 0)
    tp2 = TopicPartition("mailsluice.retry.10m", 0)
    held = {tp1: [SimpleNamespace(record=SimpleNamespace(offset=4))]}
    ends = {tp1: 10, tp2: 7}
    consumer = SimpleNamespace(assignment=lambda: [tp1, tp2], highwater=lambda tp: ends[tp])
    mover = SimpleNamespace(consumer=consumer, _held=held)
    assert retry_backlog(mover) == {"1m": 6, "10m": 0}
