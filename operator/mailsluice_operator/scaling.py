"""Worker counts from consumer lag: KEDA's Kafka formula with HPA-style scale-down stabilisation.

Pure functions: the caller passes the clock reading and the recommendation history, so tests can
replay any sequence of lag readings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# (monotonic seconds, recommended replicas)
History = tuple[tuple[float, int], ...]


@dataclass(frozen=True)
class ScaleInputs:
    lag: int
    lag_per_worker: int
    min_workers: int
    max_workers: int
    partitions: int
    budget_workers: int | None = None  # most workers today's rate budget can use; None: no cap
    pinned: int | None = None  # spec.replicas: a fixed count set through the scale subresource


@dataclass(frozen=True)
class ScaleDecision:
    replicas: int
    recommended: int  # this reading's recommendation before stabilisation
    reason: str  # short text for logs and events


def recommend(inp: ScaleInputs) -> tuple[int, str]:
    """ceil(lag / lagPerWorker) within [min, max], never above partitions or the rate budget."""
    ceiling = min(inp.max_workers, inp.partitions)
    if inp.pinned is not None:
        return min(max(inp.pinned, 0), inp.partitions), "pinned by spec.replicas"
    want = math.ceil(max(inp.lag, 0) / inp.lag_per_worker)
    reason = f"lag {inp.lag} / {inp.lag_per_worker} per worker"
    if inp.budget_workers is not None and want > inp.budget_workers:
        want = inp.budget_workers
        reason += f", capped at {inp.budget_workers} by today's warm-up budget"
    floor = min(inp.min_workers, ceiling)
    return max(floor, min(want, ceiling)), reason


def stabilise(
    history: Sequence[tuple[float, int]], now: float, window_s: float, recommended: int
) -> tuple[int, History]:
    """Scale up at once; scale down only to the highest recommendation within the window.

    Returns the replicas to set and the history to keep (entries older than the window dropped).
    """
    kept = (*tuple((t, r) for t, r in history if now - t < window_s), (now, recommended))
    return max(r for _, r in kept), kept


def decide(
    inp: ScaleInputs, history: Sequence[tuple[float, int]], now: float, window_s: float
) -> tuple[ScaleDecision, History]:
    recommended, reason = recommend(inp)
    if inp.pinned is not None:
        return ScaleDecision(recommended, recommended, reason), ((now, recommended),)
    replicas, kept = stabilise(history, now, window_s, recommended)
    if replicas > recommended:
        reason += f", holding {replicas} for the scale-down window"
    return ScaleDecision(replicas, recommended, reason), kept
