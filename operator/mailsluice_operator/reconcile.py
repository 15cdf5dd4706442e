"""One reconciliation of a SendingPool: validate, topic and lag, replicas, children, status.

Handlers and the scaling timer both call `reconcile`; it takes its edges (API client, Kafka round,
clocks) as arguments and returns the status to write and the events to post.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from mailsluice.contracts.topics import consumer_group, queue_topic
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.policy.warmup import Schedule
from mailsluice_operator import render, scaling, status, warmup
from mailsluice_operator.kafka_admin import KafkaUnavailable, PoolKafkaState
from mailsluice_operator.kube import KubeError
from mailsluice_operator.settings import OperatorSettings

log = logging.getLogger(__name__)

KafkaRound = Callable[[str, int, str], Awaitable[PoolKafkaState]]  # topic, partitions, group


class Kube(Protocol):
    async def apply(self, manifest: Mapping[str, Any]) -> dict[str, Any]: ...

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None: ...


@dataclass(frozen=True)
class PostedEvent:
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass
class Outcome:
    status: dict[str, Any]
    events: list[PostedEvent] = field(default_factory=list)
    history: scaling.History = ()


DEFAULTS: dict[str, Any] = {
    "partitions": 12,
    "minWorkers": 1,
    "maxWorkers": 4,
    "lagPerWorker": 1000,
    "workerThroughput": 50.0,
    "scaleDownStabilizationSeconds": 300,
}


def with_defaults(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The CRD's defaults, again: specs stored before a default existed may lack them."""
    return {**DEFAULTS, **spec}


def spec_problem(spec: Mapping[str, Any]) -> tuple[str, str] | None:
    """Limits the schema should have refused; checked again so an old CRD cannot crash us."""
    lo, hi, parts = spec["minWorkers"], spec["maxWorkers"], spec["partitions"]
    if not 0 <= lo <= hi:
        return "InvalidLimits", f"minWorkers {lo} must be between 0 and maxWorkers {hi}"
    if hi > parts:
        return "InvalidLimits", f"maxWorkers {hi} exceeds partitions {parts}"
    if spec["lagPerWorker"] < 1 or spec["workerThroughput"] <= 0:
        return "InvalidLimits", "lagPerWorker and workerThroughput must be positive"
    return None


def referenced_secrets(spec: Mapping[str, Any], op: OperatorSettings) -> list[str]:
    names = [n for n in (op.kafka_secret, op.kafka_ca_secret) if n]
    for env in (spec.get("workerTemplate") or {}).get("env") or []:
        ref = (env.get("valueFrom") or {}).get("secretKeyRef") or {}
        if ref.get("name") and not ref.get("optional"):
            names.append(ref["name"])
    return sorted(set(names))


def _pinned(spec: Mapping[str, Any]) -> int | None:
    value = spec.get("replicas")
    return None if value is None else int(value)


@dataclass(frozen=True)
class Ramp:
    schedule: Schedule | None
    state: warmup.WarmupState


def _ramp(spec: Mapping[str, Any], created: str | None, today: dt.date) -> Ramp:
    """Raises WarmupError for a warm-up block the operator cannot use."""
    block = spec.get("warmup") or {}
    schedule = warmup.schedule(block)
    return Ramp(schedule, warmup.state_on(schedule, warmup.start_date(block, created), today))


def _scale(
    spec: Mapping[str, Any],
    state: PoolKafkaState,
    budget: int | None,
    history: scaling.History,
    monotonic: float,
) -> tuple[scaling.ScaleDecision, scaling.History]:
    inputs = scaling.ScaleInputs(
        lag=state.lag,
        lag_per_worker=spec["lagPerWorker"],
        min_workers=spec["minWorkers"],
        max_workers=spec["maxWorkers"],
        partitions=state.partitions,
        budget_workers=budget,
        pinned=_pinned(spec),
    )
    window = float(spec["scaleDownStabilizationSeconds"])
    return scaling.decide(inputs, history, monotonic, window)


async def reconcile(
    body: Mapping[str, Any],
    *,
    kube: Kube,
    kafka_round: KafkaRound,
    op: OperatorSettings,
    kafka: KafkaSettings,
    monotonic: float,
    today: dt.date,
    now_iso: str,
    history: scaling.History,
) -> Outcome:
    raw = render.Pool.from_body(body)
    spec = with_defaults(raw.spec)
    pool = render.Pool(raw.name, raw.namespace, raw.uid, spec)
    previous: Mapping[str, Any] = body.get("status") or {}
    generation = int(body["metadata"].get("generation", 1))
    topic = queue_topic(pool.name)
    out: dict[str, Any] = {
        "observedGeneration": generation,
        "selector": render.selector_string(pool.name),
        "topic": topic,
    }
    problem = spec_problem(spec)
    ramp = Ramp(None, warmup.WarmupState(0, 0))
    try:
        ramp = _ramp(spec, body["metadata"].get("creationTimestamp"), today)
        out.update(warmupDay=ramp.state.day, todayCap=ramp.state.cap)
    except warmup.WarmupError as exc:
        problem = problem or ("InvalidWarmup", str(exc))
    if problem is None:
        problem = await _missing_secret(kube, pool.namespace, referenced_secrets(spec, op))
    state = None
    if problem is None:
        try:
            state = await kafka_round(topic, spec["partitions"], consumer_group(pool.name))
        except KafkaUnavailable as exc:
            problem = ("KafkaUnavailable", str(exc))
    replicas, kept, warning = int(previous.get("replicas", spec["minWorkers"])), history, None
    if state is not None:
        warning = _shrink_refused(topic, spec, state)
        usage = warmup.today_usage(state.warmup_records, pool.name, ramp.schedule, today)
        budget = warmup.workers_for_budget(ramp.state.cap, usage or 0, spec["workerThroughput"])
        decision, kept = _scale(spec, state, budget, history, monotonic)
        replicas = decision.replicas
        out.update(lag=state.lag, partitions=state.partitions, todayUsage=usage)
        out["lastScaleReason"] = decision.reason
    deployment: dict[str, Any] = {}
    if problem is None or problem[0] == "KafkaUnavailable":
        # Children do not depend on Kafka: keep them in step with the spec even while it is away.
        try:
            deployment = await _apply_children(kube, pool, replicas, kafka, op)
        except KubeError as exc:
            problem = problem or ("ApplyFailed", str(exc))
    health = _health(problem, warning, replicas, deployment)
    out.update(replicas=replicas, readyReplicas=health.ready)
    out["conditions"] = status.merge_conditions(
        previous.get("conditions"),
        status.conditions_for(health),
        generation=generation,
        now=now_iso,
    )
    return Outcome(out, _events(previous, out, problem or warning), kept)


def _shrink_refused(
    topic: str, spec: Mapping[str, Any], state: PoolKafkaState
) -> tuple[str, str] | None:
    if state.change.action != "shrink-refused":
        return None
    return (
        "PartitionsShrinkRefused",
        f"topic {topic} has {state.partitions} partitions; Kafka cannot shrink it to "
        f"{spec['partitions']}",
    )


async def _apply_children(
    kube: Kube, pool: render.Pool, replicas: int, kafka: KafkaSettings, op: OperatorSettings
) -> dict[str, Any]:
    """Server-side apply every child; returns the Deployment as the API server stored it."""
    deployment: dict[str, Any] = {}
    for manifest in render.render_all(pool, replicas, kafka, op):
        applied = await kube.apply(manifest)
        if manifest["kind"] == "Deployment":
            deployment = applied
    return deployment


async def _missing_secret(kube: Kube, namespace: str, names: list[str]) -> tuple[str, str] | None:
    for name in names:
        try:
            found = await kube.get("Secret", namespace, name)
        except KubeError as exc:
            return "SecretUnreadable", f"cannot read Secret {name}: {exc}"
        if found is None:
            return "SecretNotFound", f"Secret {namespace}/{name} does not exist"
    return None


def _health(
    problem: tuple[str, str] | None,
    warning: tuple[str, str] | None,
    replicas: int,
    deployment: Mapping[str, Any],
) -> status.Health:
    dstatus = deployment.get("status") or {}
    current = dstatus.get("observedGeneration", 0) >= (deployment.get("metadata") or {}).get(
        "generation", 1
    )
    return status.Health(
        problem=problem,
        warning=warning,
        desired=replicas,
        ready=int(dstatus.get("readyReplicas", 0)),
        updated=int(dstatus.get("updatedReplicas", 0)) if current else 0,
    )


def _condition(conds: Any, type_: str) -> Mapping[str, Any]:
    for cond in conds or ():
        if cond.get("type") == type_:
            return dict(cond)
    return {}


def _events(
    previous: Mapping[str, Any], now: Mapping[str, Any], trouble: tuple[str, str] | None
) -> list[PostedEvent]:
    """Events on changes only, so a timer tick does not repeat them."""
    events = []
    before = _condition(previous.get("conditions"), status.STALLED)
    after = _condition(now["conditions"], status.STALLED)
    if trouble and (before.get("status") != "True" or before.get("reason") != trouble[0]):
        events.append(PostedEvent("Warning", trouble[0], trouble[1]))
    if before.get("status") == "True" and after.get("status") == "False":
        events.append(PostedEvent("Normal", "Recovered", "the pool is progressing again"))
    if "replicas" in previous and previous["replicas"] != now["replicas"]:
        events.append(
            PostedEvent(
                "Normal",
                "Scaled",
                f"workers {previous['replicas']} -> {now['replicas']} "
                f"({now.get('lastScaleReason', '')})",
            )
        )
    return events
