"""Metrics of the SendingPool operator: reconciles and worker counts."""

from __future__ import annotations

import contextlib
from typing import Any

from prometheus_client import Counter, Gauge

RECONCILE_RESULTS = ("ok", "error")
WORKER_KINDS = ("desired", "ready")

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


def init_operator() -> None:
    """Start the operator's reconcile counters at zero; only the operator process calls this,
    so other components do not export an operator series."""
    for result in RECONCILE_RESULTS:
        RECONCILES.labels(result)


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
