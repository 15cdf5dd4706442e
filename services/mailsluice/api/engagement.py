"""`GET /v1/engagement?window=7d`: the authenticated tenant's deliveries, unique opens and clicks
and the three rates (raw and estimated-human), per provider and in total, over the last 1, 7 or
30 UTC days (today included, so far).

The figures are the stream processors' per-day buckets (streams/engaged.py) read from the
compacted topic mailsluice.engagement-days; every events partition counts its own, so a day's figure
is the sum of its partitions' records. Opens and clicks count on the day their message was
delivered: a window's rates are those of the mail it delivered.

Wiring (the API service): `KafkaEngagement(kafka)`, started and stopped with the service, and
`router(current_tenant, engagement)`.
"""

import contextlib
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends

from mailsluice.api.problems import problem
from mailsluice.contracts.engagement_stats import (
    COUNTS,
    EngagementBucket,
    decode_bucket,
    parse_bucket_key,
)
from mailsluice.contracts.topics import ENGAGEMENT_DAYS_TOPIC
from mailsluice.kafka.compacted import START_TIMEOUT_S, CompactedView
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.tenancy.model import Tenant

WINDOWS = {"1d": 1, "7d": 7, "30d": 30}


class EngagementSource(Protocol):
    def buckets(self, tenant: str) -> Iterable[EngagementBucket]: ...


def days_of(window_days: int, now: float) -> list[str]:
    today = datetime.fromtimestamp(now, UTC).date()
    return [(today - timedelta(days=n)).isoformat() for n in range(window_days)]


def summed(tenant: str, provider: str, buckets: Iterable[EngagementBucket]) -> EngagementBucket:
    totals = dict.fromkeys(COUNTS, 0)
    for bucket in buckets:
        for name in COUNTS:
            totals[name] += getattr(bucket, name)
    return EngagementBucket(tenant=tenant, provider=provider, day="", ts=0.0, **totals)


def figures(bucket: EngagementBucket) -> dict[str, Any]:
    return {
        "delivered": bucket.delivered,
        "opens": {"all": bucket.opens, "human": bucket.opens_human},
        "clicks": {"all": bucket.clicks, "human": bucket.clicks_human},
        "every_link": bucket.every_link,
        "rates": {"all": bucket.rates(human=False), "human": bucket.rates(human=True)},
    }


def body(tenant: str, window: str, buckets: Iterable[EngagementBucket], now: float) -> Any:
    days = days_of(WINDOWS[window], now)
    wanted = set(days)
    chosen = [b for b in buckets if b.day in wanted]
    providers = sorted({b.provider for b in chosen})
    return {
        "window": window,
        "from": days[-1],
        "to": days[0],
        "total": figures(summed(tenant, "", chosen)),
        "providers": {
            p: figures(summed(tenant, p, (b for b in chosen if b.provider == p))) for p in providers
        },
    }


def router(
    tenant_dep: Callable[..., Tenant],
    source: EngagementSource,
    clock: Callable[[], float] = time.time,
) -> APIRouter:
    routes = APIRouter(tags=["engagement"])

    @routes.get(
        "/v1/engagement",
        summary="The tenant's deliveries, unique opens and clicks and their rates per provider",
    )
    async def get_engagement(
        tenant: Annotated[Tenant, Depends(tenant_dep)], window: str = "7d"
    ) -> Any:
        if window not in WINDOWS:
            return problem(400, "Invalid window", f"window must be one of {', '.join(WINDOWS)}")
        return body(tenant.name, window, source.buckets(tenant.name), clock())

    return routes


class KafkaEngagement:
    """mailsluice.engagement-days as a table, read to its end at start and followed."""

    def __init__(self, settings: KafkaSettings, *, client_id: str = "mailsluice-api") -> None:
        self._buckets: dict[str, dict[tuple[str, str, int], EngagementBucket]] = {}
        self.view = CompactedView(settings, ENGAGEMENT_DAYS_TOPIC, self.apply, client_id=client_id)

    async def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        await self.view.start(timeout_s)
        self.view.follow_in_background()

    async def stop(self) -> None:
        await self.view.stop()

    @property
    def ready(self) -> bool:
        return self.view.ready

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        with contextlib.suppress(ValueError):  # a key or record this version cannot read
            tenant, provider, day, partition = parse_bucket_key(key)
            held = self._buckets.setdefault(tenant, {})
            if value is None:
                held.pop((provider, day, partition), None)
            else:
                held[(provider, day, partition)] = decode_bucket(value)

    def buckets(self, tenant: str) -> list[EngagementBucket]:
        return list(self._buckets.get(tenant, {}).values())
