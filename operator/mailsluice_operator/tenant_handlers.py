"""kopf handlers for SendingTenants: thin glue from their changes and a timer to
`reconcile_tenants`, which renders the whole namespace each time.

A round writes the status of every tenant whose status it changes (a tenant's deletion can free
a domain a newer tenant waits for), not only the one whose handler runs. One lock per namespace
keeps rounds from interleaving; the timers skip a tick when another round has just covered the
namespace, so many tenants do not mean many rounds.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import kopf

from mailsluice_operator import GROUP, VERSION, kube
from mailsluice_operator.reconcile import KubeError
from mailsluice_operator.settings import OperatorSettings
from mailsluice_operator.tenant_crd import KIND, PLURAL
from mailsluice_operator.tenant_reconcile import reconcile_tenants, status_changed

RESOURCE = (GROUP, VERSION, PLURAL)
log = logging.getLogger(__name__)


@dataclass
class TenantShared:
    """What every tenant handler of one operator run gets as `param`."""

    op: OperatorSettings
    clock: Callable[[], dt.datetime]
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    last_round: dict[str, float] = field(default_factory=dict)  # namespace -> monotonic

    def lock(self, namespace: str) -> asyncio.Lock:
        return self.locks.setdefault(namespace, asyncio.Lock())


def register(registry: kopf.OperatorRegistry, shared: TenantShared) -> None:
    handlers: list[tuple[Callable[[Any], object], Callable[..., object]]] = [
        (on(*RESOURCE, registry=registry, param=shared), on_tenant_change)
        for on in (kopf.on.create, kopf.on.update, kopf.on.resume)
    ]
    every = shared.op.tenant_interval_s
    timer = kopf.timer(*RESOURCE, interval=every, backoff=every, registry=registry, param=shared)
    handlers += [
        (timer, tenant_tick),
        (kopf.on.delete(*RESOURCE, registry=registry, param=shared), on_tenant_delete),
        (kopf.on.startup(registry=registry, param=shared), tenant_startup),
    ]
    for decorator, handler in handlers:
        decorator(handler)  # kopf types `param` as optional; these handlers all get it


async def on_tenant_change(body: kopf.Body, param: TenantShared, **_: Any) -> None:
    if not body["metadata"].get("deletionTimestamp"):
        await tenant_round(body["metadata"]["namespace"], param)


async def tenant_tick(body: kopf.Body, param: TenantShared, **_: Any) -> None:
    namespace = body["metadata"]["namespace"]
    since = time.monotonic() - param.last_round.get(namespace, float("-inf"))
    if since >= param.op.tenant_interval_s / 2 and not body["metadata"].get("deletionTimestamp"):
        await tenant_round(namespace, param)


async def on_tenant_delete(body: kopf.Body, param: TenantShared, **_: Any) -> None:
    # The deleted tenant is still listed (kopf's finalizer holds it) until this returns.
    await tenant_round(body["metadata"]["namespace"], param, leaving=body["metadata"]["name"])


async def tenant_round(namespace: str, shared: TenantShared, leaving: str = "") -> None:
    """Render the namespace's tenants into their Secret and write the statuses that change."""
    async with shared.lock(namespace):
        try:
            async with kube.connect() as api:
                await _round(api, namespace, shared, leaving)
        except (kube.KubeUnavailable, KubeError) as exc:
            every = shared.op.tenant_interval_s
            raise kopf.TemporaryError(str(exc), delay=every) from exc
        shared.last_round[namespace] = time.monotonic()


async def _round(api: kube.KubeApi, namespace: str, shared: TenantShared, leaving: str) -> None:
    listed = await api.list_custom(PLURAL, namespace)
    live = [
        b
        for b in listed
        if not b["metadata"].get("deletionTimestamp") and b["metadata"]["name"] != leaving
    ]
    outcome = await reconcile_tenants(
        namespace,
        live,
        kube=api,
        secret_name=shared.op.tenants_secret,
        now_iso=shared.clock().strftime("%Y-%m-%dT%H:%M:%SZ"),
        retry_s=shared.op.tenant_interval_s,
        owner=shared.op.owner_deployment if namespace == own_namespace() else "",
    )
    for body in live:
        name = body["metadata"]["name"]
        wanted = outcome.statuses[name]
        if status_changed(body.get("status") or {}, wanted):
            await api.patch_status(PLURAL, namespace, name, wanted)
        for event in outcome.events[name]:
            log.log(
                logging.WARNING if event.type == "Warning" else logging.INFO,
                "SendingTenant %s/%s %s: %s",
                namespace,
                name,
                event.reason,
                event.message,
            )
            raw = cast(kopf.RawBody, {**body, "apiVersion": f"{GROUP}/{VERSION}", "kind": KIND})
            ref = kopf.Body(raw)
            kopf.event(ref, type=event.type, reason=event.reason, message=event.message)


async def tenant_startup(param: TenantShared, **_: Any) -> None:
    """The Secret exists from the start in the operator's namespace (the API and ingest there
    mount it), even before its first tenant. Best effort: the tenants' handlers render it
    again; another namespace's Secret appears with its first tenant."""
    namespace = param.op.namespace or own_namespace()
    if not namespace:
        return
    try:
        await tenant_round(namespace, param)
    except kopf.TemporaryError as exc:
        log.warning("tenants of %s not rendered at startup: %s", namespace, exc)


def own_namespace(sa_dir: Path = kube.SA_DIR) -> str:
    """The namespace of the operator's pod (a cluster-wide operator watches all); "" outside a
    cluster."""
    try:
        return (sa_dir / "namespace").read_text().strip()
    except OSError:
        return ""
