"""`/v1/campaigns/{id}` (api/campaigns.py) with FastAPI's TestClient and an in-memory source:
the tenant's own counts and ETA; another tenant's campaign is a 404 like a missing one."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from support.api import header_tenants, router_client

from mailsluice.api.campaigns import KafkaCampaigns, router
from mailsluice.campaigns.eta import Caps
from mailsluice.campaigns.warmup_caps import PoolCaps
from mailsluice.contracts.campaign_stats import (
    CampaignStats,
    decode_stats,
    encode_stats,
    stats_key,
)
from mailsluice.contracts.control import DestinationRow, Status, encode_status, status_key
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.tenancy.model import parse_tenants

TENANTS = parse_tenants(
    {
        "acme": {"pools": ["bulk", "default"], "domains": ["acme.test"]},
        "beta": {"pools": ["default"], "domains": ["beta.test"]},
    }
)
NOW = 20000 * 86400.0 + 43200.0  # noon UTC


class Source:
    def __init__(self) -> None:
        self.records: dict[tuple[str, str], CampaignStats] = {}
        self.statuses: dict[str, list[DestinationRow]] = {}
        self.pool_caps: dict[str, PoolCaps] = {}
        self.asked_pools: list[list[str]] = []

    def stats(self, tenant: str, campaign: str) -> CampaignStats | None:
        return self.records.get((tenant, campaign))

    def rows(self, pools: Iterable[str], now: float) -> list[DestinationRow]:
        chosen = list(pools)
        self.asked_pools.append(chosen)
        return [row for pool in chosen for row in self.statuses.get(pool, [])]

    def caps(self, pool: str, now: float) -> PoolCaps:
        return self.pool_caps.get(pool, PoolCaps())


tenant_of = header_tenants(TENANTS)


@pytest.fixture
def source() -> Source:
    s = Source()
    s.records[("acme", "spring")] = CampaignStats(
        tenant="acme",
        campaign="spring",
        ts=NOW - 5,
        first_event=NOW - 600,
        last_event=NOW - 6,
        accepted=1000,
        rejected=3,
        suppressed=7,
        delivered=700,
        bounced_hard=20,
        bounced_soft=5,
        expired=2,
        complaints=1,
        unsubscribes=4,
        opens=400,
        opens_human=250,
        clicks=100,
        clicks_human=50,
        every_link=3,
        deferred=13,
        pending={"google": 200, "yahoo": 73},
        pools=("bulk", "not-acmes"),
    )
    s.records[("beta", "secret")] = CampaignStats(tenant="beta", campaign="secret", accepted=9)
    s.statuses["bulk"] = [
        DestinationRow("google#0", "normal", queued=100, rate=1.0),
        DestinationRow("google#1", "normal", queued=100, rate=1.0),
        DestinationRow("yahoo", "normal", queued=73, rate=0.5),
    ]
    return s


@pytest.fixture
def client(source: Source) -> Iterator[TestClient]:
    with router_client(router(tenant_of, source, clock=lambda: NOW)) as c:
        yield c


def test_the_tenants_campaign_counts_and_eta(client: TestClient, source: Source) -> None:
    resp = client.get("/v1/campaigns/spring", headers={"x-tenant": "acme"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["counts"] == {
        "requested": 1010,
        "accepted": 1000,
        "rejected": 3,
        "suppressed": 7,
        "delivered": 700,
        "deferred": 13,
        "bounced": {"hard": 20, "soft": 5},
        "expired": 2,
        "complaints": 1,
        "unsubscribes": 4,
        "opens": {"all": 400, "human": 250},
        "clicks": {"all": 100, "human": 50},
        "every_link": 3,
    }
    assert body["rates"] == {
        "all": {"open_rate": 400 / 700, "click_rate": 100 / 700, "click_to_open_rate": 0.25},
        "human": {"open_rate": 250 / 700, "click_rate": 50 / 700, "click_to_open_rate": 0.2},
    }
    assert body["pending"] == 273
    assert body["pending_by_destination"] == {"google": 200, "yahoo": 73}
    # google: 200 at 2/s = 100 s; yahoo: 73 at 0.5/s = 146 s
    assert body["eta_seconds"] == pytest.approx(146.0)
    assert body["eta"].startswith("2024-10-04T12:02:26")
    assert body["updated_at"].startswith("2024-10-04T11:59:55")
    assert source.asked_pools == [["bulk"]]  # the campaign's pools, the tenant's only


def test_the_warmup_caps_of_the_default_pool_push_the_eta(
    client: TestClient, source: Source
) -> None:
    source.pool_caps["bulk"] = PoolCaps(providers={"google": Caps(today=100, next_days=(1000,))})
    body = client.get("/v1/campaigns/spring", headers={"x-tenant": "acme"}).json()
    # 100 of google's 200 today, the rest at 2/s from midnight: 50 s after it
    assert body["eta_seconds"] == pytest.approx(43200 + 50)


def test_the_caps_of_every_pool_the_campaign_uses_add_up(
    client: TestClient, source: Source
) -> None:
    spring = source.records[("acme", "spring")]
    source.records[("acme", "spring")] = spring.model_copy(update={"pools": ("bulk", "default")})
    source.pool_caps["bulk"] = PoolCaps(providers={"google": Caps(today=60, next_days=(1000,))})
    source.pool_caps["default"] = PoolCaps(providers={"google": Caps(today=40, next_days=(9,))})
    body = client.get("/v1/campaigns/spring", headers={"x-tenant": "acme"}).json()
    assert body["eta_seconds"] == pytest.approx(43200 + 50)  # 100 today in all, as above
    assert source.asked_pools == [["bulk", "default"]]
    source.pool_caps["default"] = PoolCaps()  # no warm-up there: no cap on google at all
    body = client.get("/v1/campaigns/spring", headers={"x-tenant": "acme"}).json()
    assert body["eta_seconds"] == pytest.approx(146.0)


def test_another_tenants_campaign_is_not_found_like_a_missing_one(client: TestClient) -> None:
    other = client.get("/v1/campaigns/secret", headers={"x-tenant": "acme"})
    missing = client.get("/v1/campaigns/nothing", headers={"x-tenant": "acme"})
    for resp in (other, missing):
        assert resp.status_code == 404
        assert resp.headers["content-type"] == "application/problem+json"
        assert resp.json()["title"] == "Campaign not found"
    assert (
        "beta" not in other.text
        and other.json()["detail"].replace("secret", "nothing") == (missing.json()["detail"])
    )
    assert client.get("/v1/campaigns/secret", headers={"x-tenant": "beta"}).status_code == 200
    assert client.get("/v1/campaigns/spring", headers={"x-tenant": "beta"}).status_code == 404


def test_a_malformed_id_is_a_400_problem(client: TestClient) -> None:
    resp = client.get("/v1/campaigns/-bad*", headers={"x-tenant": "acme"})
    assert resp.status_code == 400 and resp.json()["title"] == "Invalid campaign id"


def test_a_finished_campaign_is_due_now(client: TestClient, source: Source) -> None:
    source.records[("acme", "done")] = CampaignStats(tenant="acme", campaign="done", delivered=5)
    body = client.get("/v1/campaigns/done", headers={"x-tenant": "acme"}).json()
    assert body["eta_seconds"] == 0.0 and body["pending"] == 0
    assert body["rates"]["human"] == {  # no open yet: no click-to-open rate
        "open_rate": 0.0,
        "click_rate": 0.0,
        "click_to_open_rate": None,
    }


def test_a_record_written_before_the_engagement_counts_still_reads() -> None:
    old = b'{"v": 1, "tenant": "acme", "campaign": "c1", "delivered": 4}'
    stats = decode_stats(old)
    assert (stats.opens, stats.clicks_human, stats.every_link) == (0, 0, 0)
    assert stats.rates(human=False)["open_rate"] == 0.0


def test_unauthenticated_is_refused(client: TestClient) -> None:
    assert client.get("/v1/campaigns/spring").status_code == 401


def test_the_kafka_source_applies_records_and_skips_old_statuses() -> None:
    source = KafkaCampaigns(KafkaSettings())
    stats = CampaignStats(tenant="acme", campaign="c1", accepted=2)
    source.apply_stats(stats_key("acme", "c1"), encode_stats(stats))
    source.apply_stats(b"garbage", b"{}")  # no separator: skipped
    source.apply_stats(stats_key("acme", "c2"), b'{"v": 9, "tenant": "acme", "campaign": "c2"}')
    assert source.stats("acme", "c1") == stats and source.stats("acme", "c2") is None
    assert source.stats("beta", "c1") is None
    source.apply_stats(stats_key("acme", "c1"), None)
    assert source.stats("acme", "c1") is None
    fresh = Status("bulk", "w1", NOW - 10, (DestinationRow("google", "normal", rate=3.0),))
    stale = Status("bulk", "w2", NOW - 3600, (DestinationRow("yahoo", "normal", rate=3.0),))
    other = Status("other", "w3", NOW, (DestinationRow("aol", "normal", rate=3.0),))
    for status in (fresh, stale, other):
        source.control.apply(status_key(status.pool, status.worker), encode_status(status))
    assert [row.key for row in source.rows(["bulk"], NOW)] == ["google"]
    assert source.caps("bulk", NOW) == PoolCaps()


def test_both_routers_describe_themselves_in_the_openapi_document(source: Source) -> None:
    from mailsluice.api.suppressions import router as suppressions_router

    class NoStore:
        def entries(self, scope: object = None) -> list[object]:
            return []

    app = FastAPI()
    app.include_router(router(tenant_of, source))
    app.include_router(suppressions_router(tenant_of, NoStore(), None))  # type: ignore[arg-type]
    paths = app.openapi()["paths"]
    assert set(paths) == {
        "/v1/campaigns/{campaign_id}",
        "/v1/suppressions",
        "/v1/suppressions/{scope}/{address}",
    }
    listing = {p["name"] for p in paths["/v1/suppressions"]["get"]["parameters"]}
    assert {"scope", "address_prefix", "reason", "source", "since", "cursor", "limit"} <= listing
    assert "application/problem+json" in str(paths["/v1/suppressions"]["post"]["responses"]["403"])
