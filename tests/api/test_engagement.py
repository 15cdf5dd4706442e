"""`GET /v1/engagement` (api/engagement.py) with FastAPI's TestClient over records applied to the
Kafka view: the tenant's own figures per provider and in total, summed over partitions and the
window's days; a bad window is a 400 problem."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from support.api import header_tenants, router_client

from mailsluice.api.engagement import KafkaEngagement, router
from mailsluice.contracts.engagement_stats import EngagementBucket, bucket_key, encode_bucket
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.tenancy.model import parse_tenants

TENANTS = parse_tenants(
    {
        "acme": {"pools": ["default"], "domains": ["acme.test"]},
        "beta": {"pools": ["default"], "domains": ["beta.test"]},
    }
)
NOW = 20000 * 86400.0 + 43200.0  # 2024-10-04 noon UTC
tenant_of = header_tenants(TENANTS)


def put(view: KafkaEngagement, tenant: str, provider: str, day: str, part: int, **n: int) -> None:
    bucket = EngagementBucket(tenant=tenant, provider=provider, day=day, partition=part, **n)
    view.apply(bucket_key(tenant, provider, day, part).encode(), encode_bucket(bucket))


@pytest.fixture
def view() -> KafkaEngagement:
    v = KafkaEngagement(KafkaSettings())
    put(v, "acme", "google", "2024-10-04", 0, delivered=60, opens=40, opens_human=20, clicks=5)
    put(v, "acme", "google", "2024-10-04", 1, delivered=40, opens=10, opens_human=10, clicks=5)
    put(v, "acme", "yahoo", "2024-10-01", 0, delivered=10, opens=5, opens_human=2, clicks=1)
    put(v, "acme", "yahoo", "2024-09-20", 0, delivered=1000, opens=10)  # outside 7 days
    put(v, "beta", "google", "2024-10-04", 0, delivered=5, opens=5, opens_human=5)
    put(v, "acme", "yahoo", "2024-10-02", 2, delivered=3)
    v.apply(bucket_key("acme", "yahoo", "2024-10-02", 2).encode(), None)  # deleted
    v.apply(b"garbage", b"{}")  # not a key this version reads: skipped
    return v


@pytest.fixture
def client(view: KafkaEngagement) -> Iterator[TestClient]:
    with router_client(router(tenant_of, view, clock=lambda: NOW)) as c:
        yield c


def test_the_tenants_figures_per_provider_over_the_window(client: TestClient) -> None:
    resp = client.get("/v1/engagement?window=7d", headers={"x-tenant": "acme"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["window"], body["from"], body["to"]) == ("7d", "2024-09-28", "2024-10-04")
    assert set(body["providers"]) == {"google", "yahoo"}
    google = body["providers"]["google"]
    assert google["delivered"] == 100  # two partitions' records of the day
    assert google["opens"] == {"all": 50, "human": 30}
    assert google["clicks"] == {"all": 10, "human": 0}
    assert google["rates"]["all"] == {
        "open_rate": 0.5,
        "click_rate": 0.1,
        "click_to_open_rate": 0.2,
    }
    assert body["total"]["delivered"] == 110
    assert body["total"]["rates"]["human"]["open_rate"] == pytest.approx(32 / 110)


def test_the_window_chooses_the_days(client: TestClient) -> None:
    today = client.get("/v1/engagement?window=1d", headers={"x-tenant": "acme"}).json()
    assert set(today["providers"]) == {"google"} and today["from"] == today["to"]
    month = client.get("/v1/engagement?window=30d", headers={"x-tenant": "acme"}).json()
    assert month["providers"]["yahoo"]["delivered"] == 1010
    default = client.get("/v1/engagement", headers={"x-tenant": "acme"}).json()
    assert default["window"] == "7d"


def test_another_tenants_figures_are_not_seen(client: TestClient) -> None:
    beta = client.get("/v1/engagement?window=30d", headers={"x-tenant": "beta"}).json()
    assert beta["total"]["delivered"] == 5 and set(beta["providers"]) == {"google"}


def test_no_mail_has_no_rates(client: TestClient, view: KafkaEngagement) -> None:
    view._buckets.clear()
    body = client.get("/v1/engagement?window=1d", headers={"x-tenant": "acme"}).json()
    assert body["providers"] == {}
    assert body["total"]["rates"]["all"] == {
        "open_rate": None,
        "click_rate": None,
        "click_to_open_rate": None,
    }


def test_a_bad_window_is_a_400_problem(client: TestClient) -> None:
    resp = client.get("/v1/engagement?window=2w", headers={"x-tenant": "acme"})
    assert resp.status_code == 400
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.json()["title"] == "Invalid window"


def test_unauthenticated_is_refused(client: TestClient) -> None:
    assert client.get("/v1/engagement").status_code == 401
