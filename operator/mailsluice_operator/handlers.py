"""kopf handlers: thin glue from SendingPool changes and a timer to `reconcile` (SendingTenants:
tenant_handlers, registered here too).

The handlers are module-level functions; `build_registry` registers them on a fresh registry and
hands them what one operator run shares (settings, the Kafka rounds, the clock) as kopf's
`param`. So the CLI and the tests (KopfRunner) run the same handlers with their own settings,
and nothing is registered at import time. Per-pool state (a lock, the scale history) lives in
kopf's per-object `memo`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import kopf

from mailsluice.contracts.topics import queue_topic
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.metrics.operator import RECONCILES, forget_pool, record_workers
from mailsluice_operator import GROUP, PLURAL, VERSION, kafka_admin, kube, render, tenant_handlers
from mailsluice_operator.reconcile import reconcile
from mailsluice_operator.settings import OperatorSettings

FINALIZER = f"{GROUP}/operator"
RESOURCE = (GROUP, VERSION, PLURAL)
Logger = logging.Logger | logging.LoggerAdapter[Any]
CHILD_KINDS = ("Deployment", "PodDisruptionBudget")


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class Shared:
    """What every handler of one operator run gets as `param`."""

    op: OperatorSettings
    kafka: KafkaSettings
    kafka_round: kafka_admin.KafkaRounds
    clock: Callable[[], dt.datetime] = _utcnow


def build_registry(
    op: OperatorSettings,
    kafka: KafkaSettings,
    *,
    clock: Callable[[], dt.datetime] = _utcnow,
) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    shared = Shared(op, kafka, kafka_admin.KafkaRounds(kafka, op.kafka_timeout_s), clock)
    _add(kopf.on.login(registry=registry), login)
    _add(kopf.on.startup(registry=registry), startup)
    _add(kopf.on.cleanup(registry=registry, param=shared), cleanup)
    for on in (kopf.on.create, kopf.on.update, kopf.on.resume):
        _add(on(*RESOURCE, registry=registry, param=shared), on_change)
    # A failed round retries at the normal pace, not after kopf's default 60 s backoff: a
    # short API or Kafka hiccup must not pause scaling for four rounds.
    every = op.scale_interval_s
    timer = kopf.timer(*RESOURCE, interval=every, backoff=every, registry=registry, param=shared)
    _add(timer, scale)
    _add(kopf.on.delete(*RESOURCE, registry=registry, param=shared), on_delete)
    tenant_handlers.register(registry, tenant_handlers.TenantShared(op, clock))
    return registry


def _add(decorator: Callable[[Any], object], handler: Callable[..., object]) -> None:
    # kopf types `param` as optional; every handler registered here gets it.
    decorator(handler)


def configure(settings: kopf.OperatorSettings) -> None:
    """kopf settings for a standalone, single-replica operator."""
    settings.peering.standalone = True
    settings.persistence.finalizer = FINALIZER
    # Events are posted explicitly on transitions; handler log lines stay in the log only.
    settings.posting.level = logging.WARNING
    # The CRD is installed before the operator (Helm's crds/); serving only what exists at
    # start needs no cluster-wide read of CRDs and namespaces: a namespaced Role is enough.
    settings.scanning.disabled = True
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 60
    # A pool deleted while its timer runs keeps kopf's finalizer until the timer is seen to
    # have stopped; kopf looks again after this many seconds (default 60).
    settings.background.cancellation_polling = 1.0


async def login(**_: Any) -> kopf.ConnectionInfo:
    """kopf's own connection uses the credentials our client uses (in-cluster, else the full
    kubeconfig); kopf logs in again when they expire or the API server refuses them."""
    return await kube.connection_info(await kube.load_credentials())


def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    configure(settings)


async def cleanup(param: Shared, **_: Any) -> None:
    # Let Kafka rounds cut short by shutdown finish, then close the clients.
    await param.kafka_round.close(param.op.kafka_timeout_s * 3)


async def on_change(
    body: kopf.Body, patch: kopf.Patch, memo: Any, logger: Logger, param: Shared, **_: Any
) -> None:
    await _reconcile(body, patch, memo, logger, param)


async def scale(
    body: kopf.Body, patch: kopf.Patch, memo: Any, logger: Logger, param: Shared, **_: Any
) -> None:
    await _reconcile(body, patch, memo, logger, param)


async def on_delete(body: kopf.Body, memo: Any, logger: Logger, param: Shared, **_: Any) -> None:
    # Owner references let the garbage collector do this in a full cluster; deleting here
    # too makes removal prompt and works where no controller-manager runs.
    name, namespace = body["metadata"]["name"], body["metadata"]["namespace"]
    names = {
        "Deployment": render.deployment_name(name),
        "PodDisruptionBudget": render.deployment_name(name),
    }
    async with _lock(memo):
        # The timer may be mid-round; after the lock it sees "deleted" and writes nothing.
        memo["deleted"] = True
        try:
            async with kube.connect() as api:
                for kind in CHILD_KINDS:
                    await api.delete(kind, namespace, names[kind])
        except kube.KubeUnavailable as exc:
            raise kopf.TemporaryError(str(exc), delay=param.op.scale_interval_s) from exc
    forget_pool(name)
    # The queue topic stays: it may still hold accepted mail (RFC 5321: never lose it).
    logger.info("pool %s deleted; topic %s kept", name, queue_topic(name))


async def _reconcile(
    body: kopf.Body, patch: kopf.Patch, memo: Any, logger: Logger, shared: Shared
) -> None:
    if body["metadata"].get("deletionTimestamp"):
        return  # on_delete owns the pool now
    async with _lock(memo):
        if memo.get("deleted"):
            return
        try:
            await _reconcile_locked(body, patch, memo, logger, shared)
        except kube.KubeUnavailable as exc:
            RECONCILES.labels("error").inc()
            # No answer from the API server: kopf tries again at the timer's pace.
            raise kopf.TemporaryError(str(exc), delay=shared.op.scale_interval_s) from exc
        except BaseException:
            RECONCILES.labels("error").inc()
            raise
        RECONCILES.labels("ok").inc()


async def _reconcile_locked(
    body: kopf.Body, patch: kopf.Patch, memo: Any, logger: Logger, shared: Shared
) -> None:
    status = body.get("status") or {}
    history = memo.get("scale_history")
    if history is None and "replicas" in status:
        # After an operator restart: do not scale down before a full window has passed.
        history = ((time.monotonic(), int(status["replicas"])),)
    now = shared.clock()
    async with kube.connect() as api:
        outcome = await reconcile(
            body,
            kube=api,
            kafka_round=shared.kafka_round,
            op=shared.op,
            kafka=shared.kafka,
            monotonic=time.monotonic(),
            today=now.date(),
            now_iso=now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            history=history or (),
            previous=memo.get("status"),
        )
    memo["scale_history"] = outcome.history
    # Rounds run one at a time (the lock), but the next one's body may not show this patch yet.
    memo["status"] = {**status, **outcome.status}
    patch.status.update(outcome.status)
    record_workers(body["metadata"]["name"], dict(outcome.status))
    for event in outcome.events:
        logger.log(
            logging.WARNING if event.type == "Warning" else logging.INFO,
            "%s: %s",
            event.reason,
            event.message,
        )
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)


def _lock(memo: Any) -> asyncio.Lock:
    """One lock per pool (kopf gives each object one memo, shared by its handlers)."""
    lock = memo.get("lock")
    if lock is None:
        lock = memo["lock"] = asyncio.Lock()
    return lock  # type: ignore[no-any-return]
