"""`GET /v1/campaigns/{id}`: a campaign's counts and ETA for the authenticated tenant.

The counts are the stream processors' (streams/tally.py), read from the compacted topic
mailsluice.campaign-stats; the ETA (campaigns/eta.py) combines the campaign's pending mail per
destination with the delivery workers' status records (mailsluice.control: rate, queue, holds)
and the warm-up caps of the tenant's default pool (its policy and mailsluice.warmup). Another
tenant's campaign is a 404 like one that does not exist: the record is looked up under the
caller's tenant name only.

Wiring (the API service):

    campaigns = KafkaCampaigns(kafka, warmup_of=load_policy(path).warmup)
    await campaigns.start()            # reads the three topics to their end, then follows
    app.include_router(router(authenticated_tenant, campaigns))
    ...
    await campaigns.stop()
"""

import contextlib
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends

from mailsluice.api.problems import problem
from mailsluice.campaigns.eta import eta
from mailsluice.campaigns.warmup_caps import (
    PoolCaps,
    combined,
    destinations,
    pool_caps,
    seen_by_destination,
)
from mailsluice.contracts.campaign_stats import CampaignStats, decode_stats, parse_stats_key
from mailsluice.contracts.campaigns import LabelError, check_campaign
from mailsluice.contracts.control import ControlState, DestinationRow
from mailsluice.contracts.topics import CAMPAIGN_STATS_TOPIC, CONTROL_TOPIC, WARMUP_TOPIC
from mailsluice.contracts.warmup import WarmupUsage, decode_usage
from mailsluice.kafka.compacted import START_TIMEOUT_S, CompactedView
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.policy.warmup_config import WarmupConfig
from mailsluice.tenancy.model import Tenant

# A worker's status older than this is from a worker gone without its tombstone.
STATUS_MAX_AGE_S = 300.0


class CampaignSource(Protocol):
    def stats(self, tenant: str, campaign: str) -> CampaignStats | None: ...

    def rows(self, pools: Iterable[str], now: float) -> list[DestinationRow]: ...

    def caps(self, pool: str, now: float) -> PoolCaps: ...


def _iso(ts: float) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat() if ts > 0 else None


def body(stats: CampaignStats, at: float | None, now: float) -> dict[str, Any]:
    """The response: counts, engagement rates (raw and estimated-human; null without a
    denominator), pending, and the ETA (null when unknown)."""
    return {
        "id": stats.campaign,
        "counts": {
            "requested": stats.requested,
            "accepted": stats.accepted,
            "rejected": stats.rejected,
            "suppressed": stats.suppressed,
            "delivered": stats.delivered,
            "deferred": stats.deferred,
            "bounced": {"hard": stats.bounced_hard, "soft": stats.bounced_soft},
            "expired": stats.expired,
            "complaints": stats.complaints,
            "unsubscribes": stats.unsubscribes,
            "opens": {"all": stats.opens, "human": stats.opens_human},
            "clicks": {"all": stats.clicks, "human": stats.clicks_human},
            "every_link": stats.every_link,
        },
        "rates": {"all": stats.rates(human=False), "human": stats.rates(human=True)},
        "pending": stats.pending_total,
        "pending_by_destination": stats.pending,
        "eta": _iso(at) if at is not None else None,
        "eta_seconds": max(0.0, at - now) if at is not None else None,
        "first_event_at": _iso(stats.first_event),
        "last_event_at": _iso(stats.last_event),
        "updated_at": _iso(stats.ts),
    }


def estimate(
    stats: CampaignStats, source: CampaignSource, tenant: Tenant, now: float
) -> float | None:
    """When the campaign's pending mail will be delivered (campaigns/eta.py)."""
    if not stats.pending_total:
        return now
    # the pools its mail went through (the tenant's own only), else the tenant's default
    pools = [p for p in stats.pools if p in tenant.pools] or [tenant.default_pool]
    caps = combined([source.caps(pool, now) for pool in pools])
    seen = seen_by_destination(source.rows(pools, now))
    return eta(destinations(stats.pending, seen, caps.providers), now, caps.pool)


def router(
    tenant_dep: Callable[..., Tenant],
    source: CampaignSource,
    clock: Callable[[], float] = time.time,
) -> APIRouter:
    routes = APIRouter(tags=["campaigns"])

    @routes.get("/v1/campaigns/{campaign_id}", summary="A campaign's counts and ETA")
    async def get_campaign(tenant: Annotated[Tenant, Depends(tenant_dep)], campaign_id: str) -> Any:
        try:
            check_campaign(campaign_id)
        except LabelError as exc:
            return problem(400, "Invalid campaign id", str(exc))
        stats = source.stats(tenant.name, campaign_id) if campaign_id else None
        if stats is None:
            return problem(404, "Campaign not found", f"no campaign {campaign_id!r}")
        now = clock()
        return body(stats, estimate(stats, source, tenant, now), now)

    return routes


# --- the Kafka side ----------------------------------------------------------------------------


class KafkaCampaigns:
    """The three compacted topics as tables, read to their end at start and followed."""

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        warmup_of: Callable[[str], WarmupConfig | None] = lambda _pool: None,
        client_id: str = "mailsluice-api-campaigns",
    ) -> None:
        self.warmup_of = warmup_of
        self._stats: dict[tuple[str, str], CampaignStats] = {}
        self._usage: dict[bytes, WarmupUsage] = {}
        self.control = ControlState()
        self.views = [
            CompactedView(settings, CAMPAIGN_STATS_TOPIC, self.apply_stats, client_id=client_id),
            CompactedView(settings, CONTROL_TOPIC, self.control.apply, client_id=client_id),
            CompactedView(settings, WARMUP_TOPIC, self.apply_usage, client_id=client_id),
        ]

    async def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        try:
            for view in self.views:
                await view.start(timeout_s)
                view.follow_in_background()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        for view in self.views:
            await view.stop()

    @property
    def ready(self) -> bool:
        return all(view.ready for view in self.views)

    def apply_stats(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        with contextlib.suppress(ValueError):  # a key or record this version cannot read
            name = parse_stats_key(key)
            if value is None:
                self._stats.pop(name, None)
            else:
                self._stats[name] = decode_stats(value)

    def apply_usage(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        if value is None:
            self._usage.pop(key, None)
            return
        with contextlib.suppress(ValueError):
            self._usage[key] = decode_usage(value)

    # --- CampaignSource -------------------------------------------------------------------

    def stats(self, tenant: str, campaign: str) -> CampaignStats | None:
        return self._stats.get((tenant, campaign))

    def rows(self, pools: Iterable[str], now: float) -> list[DestinationRow]:
        wanted = set(pools)
        return [
            row
            for (pool, _worker), status in list(self.control.statuses.items())
            if pool in wanted and status.ts >= now - STATUS_MAX_AGE_S
            for row in status.destinations
        ]

    def caps(self, pool: str, now: float) -> PoolCaps:
        config = self.warmup_of(pool)
        if config is None:
            return PoolCaps()
        return pool_caps(config, pool, list(self._usage.values()), now)
