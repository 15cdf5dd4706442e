"""Metrics of the retry mover: backlog per tier read at scrape time, moved, waiting and held
records, early releases, lateness."""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from mailsluice.metrics.labels import TIME_BUCKETS


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


# --- retry mover: moved, waiting and held records, early releases, lateness --------------------
# Labels: tier only (contracts.RETRY_TIERS). Updated by delivery/retry/mover.py.

RETRY_MOVER_MOVED = Counter(
    "mailsluice_retry_mover_moved_total",
    "Retry records moved back to their pool's queue topic.",
    ["tier"],
)
RETRY_MOVER_WAITING = Gauge(
    "mailsluice_retry_mover_waiting_records",
    "Retry records fetched and held until their not_before.",
)

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
