"""One round over a namespace's SendingTenants: read the Secrets they reference, render the
tenants Secret, apply it, and work out every tenant's status.

A round always covers the whole namespace (one tenant's change can free or take a name another
one wants), so the handlers of every tenant call the same `reconcile_tenants`. It takes its
edges (the API client, the clock) as arguments, like `reconcile` does for a pool.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mailsluice_operator import status as conditions
from mailsluice_operator.problems import PermanentProblem, PoolProblem
from mailsluice_operator.reconcile import Kube, PostedEvent
from mailsluice_operator.status import READY, STALLED, Condition
from mailsluice_operator.tenant_render import (
    Rendered,
    SecretData,
    TenantBody,
    decode_secret,
    render,
    secret_manifest,
    secret_names,
    tenants_yaml,
)


@dataclass
class TenantsOutcome:
    secret: dict[str, Any]  # the Secret as applied
    statuses: dict[str, dict[str, Any]] = field(default_factory=dict)  # tenant -> status
    events: dict[str, list[PostedEvent]] = field(default_factory=dict)


async def read_secrets(kube: Kube, namespace: str, tenants: Sequence[TenantBody]) -> SecretData:
    """Every Secret the tenants reference, decoded (None: missing). A Secret that cannot be
    read raises (KubeError): a round that guessed would drop tenants from the file."""
    names = sorted(set().union(*(secret_names(t.spec) for t in tenants)))
    return {name: decode_secret(await kube.get("Secret", namespace, name)) for name in names}


async def reconcile_tenants(
    namespace: str,
    bodies: Sequence[Mapping[str, Any]],
    *,
    kube: Kube,
    secret_name: str,
    now_iso: str,
    retry_s: float,
    owner: str = "",
) -> TenantsOutcome:
    """`bodies`: the namespace's live SendingTenants (a deleted one is left out by the caller).
    `owner`: the Deployment in `namespace` that owns the Secret ("": none)."""
    tenants = [TenantBody.from_body(b) for b in bodies]
    rendered = render(tenants, await read_secrets(kube, namespace, tenants))
    text = tenants_yaml(rendered.entries)
    manifest = secret_manifest(secret_name, namespace, text, await _owner(kube, namespace, owner))
    applied = await kube.apply(manifest)
    outcome = TenantsOutcome(applied)
    where = f"{namespace}/{secret_name}"
    for tenant in tenants:
        found = conditions_of(tenant.name, rendered, where, retry_s)
        merged = conditions.merge_conditions(
            tenant.status.get("conditions"), found, generation=tenant.generation, now=now_iso
        )
        outcome.statuses[tenant.name] = {
            "observedGeneration": tenant.generation,
            "conditions": merged,
            "secret": secret_name,
        }
        outcome.events[tenant.name] = _events(tenant.status, merged, rendered, tenant.name)
    return outcome


async def _owner(kube: Kube, namespace: str, deployment: str) -> dict[str, Any] | None:
    """The ownerReference of that Deployment; None when there is none to name (not in a cluster,
    or it is gone: then the Secret simply has no owner)."""
    if not deployment:
        return None
    found = await kube.get("Deployment", namespace, deployment)
    if found is None:
        return None
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment,
        "uid": found["metadata"]["uid"],
    }


def conditions_of(name: str, rendered: Rendered, where: str, retry_s: float) -> list[Condition]:
    """Ready: rendered into the Secret. Stalled: a problem only an edit of the spec (or of the
    older tenant's) can fix; a missing Secret is retried and does not stall."""
    problem = rendered.problems.get(name)
    if name in rendered.entries:
        return [
            Condition(READY, True, "Rendered", f"in Secret {where}"),
            Condition(STALLED, False, "Rendered", "no blocking problem"),
        ]
    if name in rendered.suspended:
        return [
            Condition(READY, False, "Suspended", "spec.suspended: left out of the tenants file"),
            Condition(STALLED, False, "Suspended", "suspended on purpose"),
        ]
    assert problem is not None
    if isinstance(problem, PermanentProblem):
        return [
            Condition(READY, False, problem.reason, problem.message),
            Condition(STALLED, True, problem.reason, problem.message),
        ]
    retrying = f"{problem.message}; retrying every {retry_s:g}s"
    return [
        Condition(READY, False, problem.reason, retrying),
        Condition(STALLED, False, "Retrying", retrying),
    ]


def _ready(conds: Any) -> Mapping[str, Any]:
    return next((c for c in conds or () if c.get("type") == READY), {})


def _events(
    previous: Mapping[str, Any], now: Sequence[Mapping[str, Any]], rendered: Rendered, name: str
) -> list[PostedEvent]:
    """Events on changes of the Ready condition only, so a timer tick does not repeat them."""
    before, after = _ready(previous.get("conditions")), _ready(now)
    if (before.get("status"), before.get("reason")) == (after.get("status"), after.get("reason")):
        return []
    problem: PoolProblem | None = rendered.problems.get(name)
    if problem is not None:
        return [PostedEvent("Warning", problem.reason, problem.message)]
    return [PostedEvent("Normal", str(after.get("reason")), str(after.get("message")))]


def status_changed(stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """Whether writing `wanted` would change the stored status (a tick usually changes none)."""
    return any(stored.get(k) != v for k, v in wanted.items())
