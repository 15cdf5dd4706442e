"""Operator dashboard: reconciles, worker counts and what scaling follows.

Not named operator.py: that would shadow the stdlib module when this directory is on sys.path.
"""

from __future__ import annotations

from mailsluice.observability.dashboards.panels import POOL, Panel, meaning, rate

OPERATOR = (
    Panel(
        "Reconciles by result",
        "ops",
        ((rate("mailsluice_operator_reconciles_total", "", "result"), "{{result}}"),),
        "SendingPool reconciliations per second, stacked; `error` rounds raised.",
        colors=meaning("ok", "error"),
        stack=True,
    ),
    Panel(
        "Workers: desired vs ready",
        "short",
        (("sum by (pool, kind) (mailsluice_operator_workers{" + POOL + "})", "{{pool}} {{kind}}"),),
        "Delivery workers the operator asks for (dashed, drawn over), and how many are ready.",
        colors=meaning("desired", "ready"),
        dashed=(".* desired",),
    ),
    Panel(
        "Queue lag by pool (what scaling follows)",
        "short",
        (("sum by (pool) (mailsluice_delivery_queue_lag_records{" + POOL + "})", "{{pool}}"),),
    ),
    Panel(
        "Records in memory",
        "short",
        (("sum by (pool) (mailsluice_delivery_inflight_messages{" + POOL + "})", "{{pool}}"),),
        "Queue records held by the workers of each pool.",
    ),
    Panel(
        "Paused consumers",
        "short",
        (
            (
                "sum by (pool) (mailsluice_delivery_paused{" + POOL + "})\n"
                "  or 0 * sum by (pool) (mailsluice_delivery_inflight_messages{" + POOL + "})",
                "{{pool}}",
            ),
        ),
        "Workers of each pool that paused fetching because their memory bound is reached (0, "
        "not nothing, for a pool whose workers never paused).",
        soft_max=1.0,
    ),
)
