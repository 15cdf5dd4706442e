"""One reconciliation of a SendingPool: validate, topic and lag, replicas, children, status.

Handlers and the scaling timer both call `reconcile`; it takes its edges (API client, Kafka round,
clocks) as arguments and returns the status to write and the events to post. A problem found on
the way (see `problems`) ends the round early and shows in the status conditions.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from mailsluice.contracts.topics import consumer_group, queue_topic
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.policy.warmup import Schedule
from mailsluice_operator import render, scaling, status, warmup
from mailsluice_operator.kafka_admin import KafkaUnavailable, PoolKafkaState
from mailsluice_operator.links import signed_links
from mailsluice_operator.problems import PermanentProblem, PoolProblem, TemporaryProblem
from mailsluice_operator.settings import OperatorSettings
from mailsluice_operator.spec import check_limits

KafkaRound = Callable[[str, int, str], Awaitable[PoolKafkaState]]  # topic, partitions, group


class KubeError(RuntimeError):
    """The API server answered with an error status (refused, forbidden, invalid, ...)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"Kubernetes API answered {status}: {message}")
        self.status = status


class Kube(Protocol):
    """What reconcile needs of the API server; errors it answers with are KubeError."""

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


@dataclass
class Round:
    """What one reconciliation learns, step by step."""

    pool: render.Pool  # with the CRD's defaults
    status: dict[str, Any]
    replicas: int
    history: scaling.History
    problem: PoolProblem | None = None
    warning: PoolProblem | None = None  # the pool works, but not as the spec asks
    deployment: Mapping[str, Any] = field(default_factory=dict)  # as the API server stored it
    changed: list[str] = field(default_factory=list)  # "created Deployment x", "updated ..."


def referenced_secrets(spec: Mapping[str, Any], op: OperatorSettings) -> list[str]:
    names = [n for n in (op.kafka_secret, op.kafka_ca_secret) if n]
    names += [links.keys_secret for links in signed_links(spec, op)]
    if (spec.get("dkim") or {}).get("secretName"):
        names.append(spec["dkim"]["secretName"])
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
    state: warmup.WarmupState  # the pool's
    addresses: dict[str, warmup.WarmupState | None]  # each source address's; None: warm


def _ramp(spec: Mapping[str, Any], created: str | None, today: dt.date) -> Ramp:
    """Raises WarmupError for a warm-up block the operator cannot use."""
    block = spec.get("warmup") or {}
    schedule = warmup.schedule(block)
    starts = warmup.address_starts(block, spec.get("sourceAddresses") or [], created)
    states = warmup.address_states(schedule, starts, today)
    own = warmup.state_on(schedule, warmup.start_date(block, created), today)
    return Ramp(schedule, warmup.pool_state(states, own), states)


def _address_status(ramp: Ramp) -> list[dict[str, Any]]:
    """status.warmup: each listed source address's day and cap (usage comes from Kafka); a
    warm address has neither, one past its ramp no cap (no nulls: list items are patched
    whole)."""
    out: list[dict[str, Any]] = []
    for address, state in ramp.addresses.items():
        if not address or ramp.schedule is None:
            continue
        entry: dict[str, Any] = {"address": address, "warm": state is None or state.cap is None}
        if state is not None:
            entry["day"] = state.day
            if state.cap is not None:
                entry["cap"] = state.cap
        out.append(entry)
    return out


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
    previous: Mapping[str, Any] | None = None,
) -> Outcome:
    """`previous`: the status this operator last wrote, when it is newer than the body's (the
    timer's body may predate the create handler's patch); default the body's."""
    pool = render.Pool.from_body(body)
    meta = body["metadata"]
    if previous is None:
        previous = body.get("status") or {}
    generation = int(meta.get("generation", 1))
    fixed = {
        "observedGeneration": generation,
        "selector": render.selector_string(pool.name),
        "topic": queue_topic(pool.name),
    }
    found = Round(pool, fixed, int(previous.get("replicas", pool.spec["minWorkers"])), history)
    try:
        ramp = _checked_ramp(pool.spec, meta.get("creationTimestamp"), today, found.status)
        await _check_secrets(kube, pool.namespace, referenced_secrets(pool.spec, op))
    except PoolProblem as exc:
        found.problem = exc
    else:
        await _scale_on_kafka(found, kafka_round, ramp, today, monotonic)
        await _apply_children(found, kube, kafka, op)
    health = _health(found)
    found.status.update(replicas=found.replicas, readyReplicas=health.ready)
    found.status["conditions"] = status.merge_conditions(
        previous.get("conditions"),
        status.conditions_for(health),
        generation=generation,
        now=now_iso,
    )
    trouble = found.problem or found.warning
    events = _events(previous, found.status, trouble, found.changed)
    return Outcome(found.status, events, found.history)


def _checked_ramp(
    spec: Mapping[str, Any], created: str | None, today: dt.date, out: dict[str, Any]
) -> Ramp:
    """The warm-up ramp, with today's place on it put into `out`; raises PermanentProblem for a
    spec the CRD should have refused (its limits reported before its warm-up)."""
    try:
        ramp = _ramp(spec, created, today)
    except warmup.WarmupError as exc:
        check_limits(spec)
        raise PermanentProblem("InvalidWarmup", str(exc)) from None
    out.update(warmupDay=ramp.state.day, todayCap=ramp.state.cap)
    out["warmup"] = _address_status(ramp) or None
    check_limits(spec)
    return ramp


async def _check_secrets(kube: Kube, namespace: str, names: list[str]) -> None:
    """Raises TemporaryProblem for the first Secret the workers would miss."""
    for name in names:
        try:
            found = await kube.get("Secret", namespace, name)
        except KubeError as exc:
            problem = TemporaryProblem("SecretUnreadable", f"cannot read Secret {name}: {exc}")
            raise problem from None
        if found is None:
            raise TemporaryProblem("SecretNotFound", f"Secret {namespace}/{name} does not exist")


async def _scale_on_kafka(
    found: Round, kafka_round: KafkaRound, ramp: Ramp, today: dt.date, monotonic: float
) -> None:
    """Topic, lag and today's warm-up usage from Kafka, and the replicas they call for; while
    Kafka is away the pool keeps the replicas it has."""
    pool, spec = found.pool, found.pool.spec
    topic = queue_topic(pool.name)
    try:
        state = await kafka_round(topic, spec["partitions"], consumer_group(pool.name))
    except KafkaUnavailable as exc:
        found.problem = TemporaryProblem("KafkaUnavailable", str(exc))
        return
    if state.change.action == "shrink-refused":
        found.warning = PermanentProblem(
            "PartitionsShrinkRefused",
            f"topic {topic} has {state.partitions} partitions; Kafka cannot shrink it to "
            f"{spec['partitions']}",
        )
    usage = _today_usage(found.status, state, pool.name, ramp, today)
    budget = warmup.workers_for_budget(ramp.state.cap, usage or 0, spec["workerThroughput"])
    decision, found.history = _scale(spec, state, budget, found.history, monotonic)
    found.replicas = decision.replicas
    found.status.update(lag=state.lag, partitions=state.partitions, todayUsage=usage)
    found.status["lastScaleReason"] = decision.reason


def _today_usage(
    out: dict[str, Any], state: PoolKafkaState, pool: str, ramp: Ramp, today: dt.date
) -> int | None:
    """The pool's usage today (None: not known for a day), each address's put into `out`."""
    usage: dict[str, int | None] = {
        address: warmup.today_usage(state.warmup_records, pool, ramp.schedule, today, address)
        for address, address_state in ramp.addresses.items()
        if address_state is not None
    }
    for entry in out.get("warmup") or []:
        if usage.get(entry["address"]) is not None:
            entry["usage"] = usage[entry["address"]]
    known = [u for u in usage.values() if u is not None]
    return sum(known) if known and len(known) == len(usage) else None


async def _apply_children(
    found: Round, kube: Kube, kafka: KafkaSettings, op: OperatorSettings
) -> None:
    """Server-side apply every child. Children do not depend on Kafka: they follow the spec even
    while it is away. Keeps the Deployment as the API server stored it, for the health."""
    deployment: Mapping[str, Any] = {}
    try:
        for manifest in render.render_all(found.pool, found.replicas, kafka, op):
            kind, meta = manifest["kind"], manifest["metadata"]
            before = await kube.get(kind, meta["namespace"], meta["name"])
            applied = await kube.apply(manifest)
            change = _change(before, applied)
            if change:
                found.changed.append(f"{change} {kind} {meta['name']}")
            if kind == "Deployment":
                deployment = applied
    except KubeError as exc:
        found.problem = found.problem or TemporaryProblem("ApplyFailed", str(exc))
        return
    found.deployment = deployment


def _change(before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> str:
    """'created', 'updated' or '' (nothing, or only the replicas: the Scaled event says that)."""
    if before is None:
        return "created"

    def spec(obj: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in (obj.get("spec") or {}).items() if k != "replicas"}

    return "updated" if spec(before) != spec(after) else ""


def _health(found: Round) -> status.Health:
    deployment = found.deployment
    dstatus = deployment.get("status") or {}
    current = dstatus.get("observedGeneration", 0) >= (deployment.get("metadata") or {}).get(
        "generation", 1
    )
    return status.Health(
        problem=found.problem,
        warning=found.warning,
        desired=found.replicas,
        ready=int(dstatus.get("readyReplicas", 0)),
        updated=int(dstatus.get("updatedReplicas", 0)) if current else 0,
    )


def _condition(conds: Any, type_: str) -> Mapping[str, Any]:
    for cond in conds or ():
        if cond.get("type") == type_:
            return dict(cond)
    return {}


def _events(
    previous: Mapping[str, Any],
    now: Mapping[str, Any],
    trouble: PoolProblem | None,
    changed: list[str],
) -> list[PostedEvent]:
    """Events on changes only, so a timer tick does not repeat them."""
    events = []
    before = _condition(previous.get("conditions"), status.STALLED)
    after = _condition(now["conditions"], status.STALLED)
    if trouble and (before.get("status") != "True" or before.get("reason") != trouble.reason):
        events.append(PostedEvent("Warning", trouble.reason, trouble.message))
    if before.get("status") == "True" and after.get("status") == "False":
        events.append(PostedEvent("Normal", "Recovered", "the pool is progressing again"))
    if changed:
        events.append(PostedEvent("Normal", "Applied", "; ".join(changed)))
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
