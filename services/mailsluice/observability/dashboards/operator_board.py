"""Operator dashboard: reconciles, worker counts and what scaling follows.

Not named operator.py: that would shadow the stdlib module when this directory is on sys.path.
"""

from __future__ import annotations

from mailsluice.observability.dashboards.panels import POOL, Panel, rate

OPERATOR = (
    Panel(
        "Reconciles by result",
        "ops",
        ((rate("mailsluice_operator_reconciles_total", "", "result"), "{{result}}"),),
        "SendingPool reconciliations per second; `error` rounds raised.",
    ),
    Panel(
        "Workers: desired vs ready",
        "short",
        (("sum by (pool, kind) (mailsluice_operator_workers{" + POOL + "})", "{{pool}} {{kind}}"),),
        "Delivery workers the operator asks for, and how many are ready.",
    ),
    Panel(
        "Queue lag by pool (what scaling follows)",
        "short",
        (("sum by (pool) (mailsluice_delivery_queue_lag_records{" + POOL + "})", "{{pool}}"),),
    ),
    Panel(
        "Records in memory, and paused consumers",
        "short",
        (
            ("sum by (pool) (mailsluice_delivery_inflight_messages{" + POOL + "})", "{{pool}}"),
            ("max by (pool) (mailsluice_delivery_paused{" + POOL + "})", "{{pool}} paused"),
        ),
        "Queue records held by the workers; paused = 1 while the memory bound is reached.",
    ),
)
