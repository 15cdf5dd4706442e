"""`GET /v1/webhooks`: the caller's webhook endpoints as configured (never their secrets) and
each one's state as the webhook sender last wrote it on mailsluice.webhooks.status: `active`,
`failing` (its last attempt failed; retries go on for 24 hours) or `paused` (failing for the
pause time, or paused by an operator: nothing is sent, its batches are dead-lettered until
`mailsluice webhooks resume` and `redrive`).

Annotations are evaluated (no `from __future__ import annotations`): the route's dependency on
`tenant_dep` is a closure FastAPI must see.
"""

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from mailsluice.contracts.topics import WEBHOOK_STATUS_TOPIC
from mailsluice.contracts.webhook_records import EndpointState, StatusTable
from mailsluice.kafka.compacted import CompactedView
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.tenancy.model import Tenant


class EndpointView(BaseModel):
    id: str
    url: str
    events: list[str]
    state: EndpointState
    since: str | None  # ISO 8601, when it entered its state (None: never failed)
    failing_since: str | None
    consecutive_failures: int
    last_error: str
    last_success: str | None


class Endpoints(BaseModel):
    data: list[EndpointView]


class WebhookStatuses(StatusTable):
    """The status topic as a table (the webhook sender's reading of it): read to its end at
    start, then followed."""

    def __init__(self, kafka: KafkaSettings, client_id: str = "mailsluice-api-webhooks") -> None:
        super().__init__()
        self.view = CompactedView(kafka, WEBHOOK_STATUS_TOPIC, self.apply, client_id=client_id)

    @property
    def ready(self) -> bool:
        return self.view.ready

    async def start(self, timeout_s: float) -> None:
        await self.view.start(timeout_s)
        self.view.follow_in_background()

    async def stop(self) -> None:
        await self.view.stop()


def _iso(ts: float) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat() if ts > 0 else None


def endpoints_of(tenant: Tenant, statuses: WebhookStatuses) -> Endpoints:
    views = []
    for hook in tenant.webhooks:
        status = statuses.get(tenant.name, hook.id)
        views.append(
            EndpointView(
                id=hook.id,
                url=hook.url,
                events=[str(e) for e in hook.events],
                state=status.state,
                since=_iso(status.since),
                failing_since=_iso(status.failing_since),
                consecutive_failures=status.consecutive_failures,
                last_error=status.last_error,
                last_success=_iso(status.last_success),
            )
        )
    return Endpoints(data=views)


def router(tenant_dep: Callable[..., Tenant], statuses: WebhookStatuses) -> APIRouter:
    routes = APIRouter(tags=["webhooks"])

    @routes.get(
        "/v1/webhooks",
        summary="The caller's webhook endpoints and their state",
        response_model=Endpoints,
    )
    async def list_webhooks(tenant: Annotated[Tenant, Depends(tenant_dep)]) -> Endpoints:
        return endpoints_of(tenant, statuses)

    return routes
