"""kopf handlers: thin glue from SendingPool changes and a timer to `reconcile`.

`build_registry` registers everything on a fresh registry, so the CLI and the tests (KopfRunner)
run the same handlers with their own settings and nothing happens at import time.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any

import kopf

from mailsluice.contracts.topics import queue_topic
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.metrics.operator import RECONCILES, forget_pool, record_workers
from mailsluice_operator import GROUP, PLURAL, VERSION, kafka_admin, render
from mailsluice_operator.kube import KubeClient, from_environment
from mailsluice_operator.reconcile import reconcile
from mailsluice_operator.settings import OperatorSettings

FINALIZER = f"{GROUP}/operator"
Logger = logging.Logger | logging.LoggerAdapter[Any]
CHILD_KINDS = ("Deployment", "PodDisruptionBudget", "ConfigMap")


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


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


def build_registry(
    op: OperatorSettings,
    kafka: KafkaSettings,
    *,
    clock: Callable[[], dt.datetime] = _utcnow,
) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    resource = (GROUP, VERSION, PLURAL)
    kafka_round = kafka_admin.KafkaRounds(kafka, op.kafka_timeout_s)

    @kopf.on.login(registry=registry)
    def _login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # A fresh registry has no default login handlers: in-cluster first, then kubeconfig.
        info: kopf.ConnectionInfo | None = kopf.login_with_service_account(
            **kwargs
        ) or kopf.login_with_kubeconfig(**kwargs)
        return info

    @kopf.on.cleanup(registry=registry)
    async def _cleanup(**_: Any) -> None:
        # Let Kafka rounds cut short by shutdown finish, then close the clients.
        await kafka_round.close(op.kafka_timeout_s * 3)

    @kopf.on.startup(registry=registry)
    def _startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure(settings)

    async def _reconcile(body: kopf.Body, patch: kopf.Patch, memo: Any, logger: Logger) -> None:
        if body["metadata"].get("deletionTimestamp"):
            return  # on_delete owns the pool now
        async with _lock(memo):
            if not memo.get("deleted"):
                try:
                    await _reconcile_locked(body, patch, memo, logger)
                except BaseException:
                    RECONCILES.labels("error").inc()
                    raise
                RECONCILES.labels("ok").inc()

    async def _reconcile_locked(
        body: kopf.Body, patch: kopf.Patch, memo: Any, logger: Logger
    ) -> None:
        status = body.get("status") or {}
        history = memo.get("scale_history")
        if history is None and "replicas" in status:
            # After an operator restart: do not scale down before a full window has passed.
            history = ((time.monotonic(), int(status["replicas"])),)
        now = clock()
        async with KubeClient(from_environment()) as kube:
            outcome = await reconcile(
                body,
                kube=kube,
                kafka_round=kafka_round,
                op=op,
                kafka=kafka,
                monotonic=time.monotonic(),
                today=now.date(),
                now_iso=now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                history=history or (),
            )
        memo["scale_history"] = outcome.history
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

    @kopf.on.create(*resource, registry=registry)
    @kopf.on.update(*resource, registry=registry)
    @kopf.on.resume(*resource, registry=registry)
    async def on_change(
        body: kopf.Body, patch: kopf.Patch, memo: Any, logger: Logger, **_: Any
    ) -> None:
        await _reconcile(body, patch, memo, logger)

    # A failed round retries at the normal pace, not after kopf's default 60 s backoff: a
    # short API or Kafka hiccup must not pause scaling for four rounds.
    @kopf.timer(
        *resource, interval=op.scale_interval_s, backoff=op.scale_interval_s, registry=registry
    )
    async def scale(
        body: kopf.Body, patch: kopf.Patch, memo: Any, logger: Logger, **_: Any
    ) -> None:
        await _reconcile(body, patch, memo, logger)

    @kopf.on.delete(*resource, registry=registry)
    async def on_delete(body: kopf.Body, memo: Any, logger: Logger, **_: Any) -> None:
        # Owner references let the garbage collector do this in a full cluster; deleting here
        # too makes removal prompt and works where no controller-manager runs.
        name, namespace = body["metadata"]["name"], body["metadata"]["namespace"]
        names = {
            "Deployment": render.deployment_name(name),
            "PodDisruptionBudget": render.deployment_name(name),
            "ConfigMap": render.configmap_name(name),
        }
        async with _lock(memo), KubeClient(from_environment()) as kube:
            # The timer may be mid-round; after the lock it sees "deleted" and writes nothing.
            memo["deleted"] = True
            for kind in CHILD_KINDS:
                await kube.delete(kind, namespace, names[kind])
        forget_pool(name)
        # The queue topic stays: it may still hold accepted mail (RFC 5321: never lose it).
        logger.info("pool %s deleted; topic %s kept", name, queue_topic(name))

    return registry


def _lock(memo: Any) -> asyncio.Lock:
    """One lock per pool (kopf gives each object one memo, shared by its handlers)."""
    lock = memo.get("lock")
    if lock is None:
        lock = memo["lock"] = asyncio.Lock()
    return lock  # type: ignore[no-any-return]
