"""The targets of issue #18 ("Throughput per core") against one `make bench` run's figures.

Printed as a block before the final JSON line and put in it under "targets"; never asserted
(a target missed is a finding, not a failed run: the exit status stays the stages' own).

Standard library only; pure, importable from tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Target:
    """One target: the figure at `path` (dots go into nested objects) `op` `bound`.
    `when`: (path, value) the measurement must have been made under, e.g. the latency rate."""

    name: str
    path: str
    op: str  # ">=", "<=" or "<"
    bound: float
    unit: str
    when: tuple[str, float] | None = None


TARGETS = (
    Target("end to end vs Postfix, same run", "ratio_vs_postfix", ">=", 1.5, "x"),
    Target("CPU/msg vs Postfix, broker apart", "cpu_ratio_vs_postfix", "<=", 2 / 3, "x"),
    Target(
        "CPU/msg vs Postfix, broker included", "cpu_ratio_vs_postfix_with_broker", "<=", 2 / 3, "x"
    ),
    Target("ingest", "ingest_msgs_per_s", ">=", 2000, " msg/s"),
    Target("delivery drain to smtp-sink", "delivery_msgs_per_s", ">=", 2500, " msg/s"),
    Target("e2e p99 at 50 msg/s", "e2e_p99_ms", "<", 50, " ms", when=("latency.rate_per_s", 50.0)),
    Target("RSS per delivery worker", "peak_rss_mb_by_process.delivery", "<=", 150, " MB"),
)


def number(value: float) -> str:
    """2000 -> '2000', 1.5 -> '1.5', 2/3 -> '0.667'."""
    return f"{value:g}" if value == round(value, 3) else f"{value:.3f}"


def lookup(figures: Mapping[str, Any], path: str) -> Any:
    """figures["a"]["b"] for "a.b"; None where any step is missing."""
    value: Any = figures
    for step in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(step)
    return value


def compare(op: str, measured: float, bound: float) -> bool:
    if op == ">=":
        return measured >= bound
    if op == "<=":
        return measured <= bound
    if op == "<":
        return measured < bound
    raise ValueError(f"unknown comparison {op!r}")


def evaluate(target: Target, figures: Mapping[str, Any]) -> dict[str, Any]:
    """{name, target, measured, met, note}: met is None when there is no figure, or when it
    was measured under other conditions than the target's."""
    measured = lookup(figures, target.path)
    row: dict[str, Any] = {
        "name": target.name,
        "target": f"{target.op} {number(target.bound)}{target.unit}",
        "measured": measured,
        "met": None,
        "note": "",
    }
    if not isinstance(measured, int | float) or isinstance(measured, bool):
        row["measured"] = None
        row["note"] = "no figure"
        return row
    if target.when is not None:
        path, wanted = target.when
        actual = lookup(figures, path)
        if actual != wanted:
            row["note"] = f"measured with {path} = {actual}, not {wanted:g}"
            return row
    row["met"] = compare(target.op, float(measured), target.bound)
    return row


def evaluate_all(figures: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [evaluate(t, figures) for t in TARGETS]


def verdict(row: Mapping[str, Any]) -> str:
    if row["met"] is None:
        return f"n/a ({row['note']})"
    return "met" if row["met"] else "NOT met"


def lines(rows: list[dict[str, Any]]) -> list[str]:
    """The printed block: one line per target, then how many were met."""
    out = ["targets of issue #18 (reported, never asserted):"]
    for row in rows:
        measured = "-" if row["measured"] is None else number(row["measured"])
        out.append(f"  {row['name']:<36} {row['target']:<14} {measured:>10}  {verdict(row)}")
    met = sum(1 for row in rows if row["met"])
    out.append(f"  {met} of {len(rows)} met")
    return out
