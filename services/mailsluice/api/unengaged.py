"""`GET /v1/engagement/unengaged`: the dry-run report of the authenticated tenant's unengaged
addresses, what its policy (or the one the query asks about) would suppress now, before the
policy is switched on. The records are the stream processors' (streams/hygiene.py), read from
the compacted topic mailsluice.engagement (mailsluice/engagement/store.py)."""

import time
from collections.abc import Callable
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends, Query

from mailsluice.contracts.engagement import Engagement
from mailsluice.engagement.policy import HygienePolicy, policy_for, report
from mailsluice.tenancy.model import Tenant


class EngagementSource(Protocol):
    def records(self, tenant: str) -> list[Engagement]: ...


def router(
    tenant_dep: Callable[..., Tenant],
    source: EngagementSource,
    default: HygienePolicy,
    clock: Callable[[], float] = time.time,
) -> APIRouter:
    routes = APIRouter(tags=["engagement"])

    @routes.get(
        "/v1/engagement/unengaged",
        summary="The addresses the unengaged policy would suppress (a dry run)",
    )
    async def unengaged(
        tenant: Annotated[Tenant, Depends(tenant_dep)],
        deliveries: Annotated[int | None, Query(ge=1, le=1000)] = None,
        days: Annotated[int | None, Query(ge=1, le=3650)] = None,
        limit: Annotated[int, Query(ge=0, le=10000)] = 1000,
    ) -> Any:
        rules = policy_for(default, tenant)
        rules = HygienePolicy(
            enabled=rules.enabled,
            deliveries=deliveries or rules.deliveries,
            days=days or rules.days,
        )
        return report(tenant.name, source.records(tenant.name), rules, clock(), limit=limit)

    return routes
