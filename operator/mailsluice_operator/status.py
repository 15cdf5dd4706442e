"""Kubernetes-style conditions (Ready, Reconciling, Stalled) for SendingPool status."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mailsluice_operator.problems import PoolProblem

READY = "Ready"
RECONCILING = "Reconciling"
STALLED = "Stalled"
CONDITION_TYPES = (READY, RECONCILING, STALLED)


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool
    reason: str  # CamelCase, machine-readable
    message: str


def merge_conditions(
    previous: Sequence[Mapping[str, Any]] | None,
    current: Sequence[Condition],
    *,
    generation: int,
    now: str,
) -> list[dict[str, Any]]:
    """Conditions as status stores them; lastTransitionTime moves only when status flips."""
    before = {c.get("type"): c for c in previous or ()}
    out = []
    for cond in current:
        status = "True" if cond.status else "False"
        old = before.get(cond.type)
        since = old.get("lastTransitionTime") if old and old.get("status") == status else None
        out.append(
            {
                "type": cond.type,
                "status": status,
                "reason": cond.reason,
                "message": cond.message,
                "lastTransitionTime": since or now,
                "observedGeneration": generation,
            }
        )
    return out


@dataclass(frozen=True)
class Health:
    """What one reconciliation found, reduced to what the conditions need."""

    problem: PoolProblem | None = None  # stops progress: Stalled, and not Ready
    # Desired state unreachable but the pool still works (e.g. partitions cannot shrink): Stalled
    # with this reason while Ready follows the workers.
    warning: PoolProblem | None = None
    desired: int = 0
    ready: int = 0
    updated: int = 0


def conditions_for(health: Health) -> list[Condition]:
    """Ready / Reconciling / Stalled from one reconciliation's findings.

    Ready means the pool can deliver: its children are in place and, unless it is scaled to
    zero, at least one worker is ready. Reconciling means workers are still rolling or scaling.
    """
    if health.problem:
        reason, message = health.problem.reason, health.problem.message
        return [
            Condition(READY, False, reason, message),
            Condition(RECONCILING, False, reason, "stalled; see the Stalled condition"),
            Condition(STALLED, True, reason, message),
        ]
    settling = health.ready < health.desired or health.updated < health.desired
    if health.desired == 0:
        ready = Condition(READY, True, "ScaledToZero", "no workers wanted (no lag)")
    elif health.ready >= 1:
        ready = Condition(
            READY, True, "WorkersReady", f"{health.ready}/{health.desired} workers ready"
        )
    else:
        ready = Condition(READY, False, "NoWorkerReady", f"0/{health.desired} workers ready")
    reconciling = (
        Condition(
            RECONCILING,
            True,
            "WorkersRolling",
            f"{health.ready} ready, {health.updated} updated of {health.desired}",
        )
        if settling
        else Condition(RECONCILING, False, "Reconciled", "workers match the spec")
    )
    stalled = (
        Condition(STALLED, True, health.warning.reason, health.warning.message)
        if health.warning
        else Condition(STALLED, False, "Progressing", "no blocking problem")
    )
    return [ready, reconciling, stalled]
