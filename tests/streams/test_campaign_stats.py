"""Campaign stats through the real pipeline: events of a campaign written to mailsluice.events,
counted by `mailsluice streams` (a subprocess), published to mailsluice.campaign-stats and
served by `GET /v1/campaigns/{id}` over HTTP; a restarted processor resumes its counts.

Engagement likewise: deliveries, opens (a privacy proxy's and a person's) and clicks (a
person's, a scanner's, an every-link burst) come back in the campaign's stats and, per provider,
from mailsluice.engagement-days by `GET /v1/engagement`; and a real Prometheus scraping the
processor finds data in every engagement panel of the Deliverability dashboard."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fastapi import FastAPI
from support.api import header_tenants
from support.asgi_server import serving
from support.events import publish_events
from support.eventually import eventually
from support.loopback import free_port
from support.processes import stop, tails
from support.prometheus import panels_with_data, start_prometheus
from support.streams_process import StreamsProcess, get, prepare, running

from mailsluice.api import engagement
from mailsluice.api.campaigns import KafkaCampaigns, router
from mailsluice.contracts.campaign_stats import CampaignStats
from mailsluice.contracts.events import Event, EventType
from mailsluice.kafka.admin import control_topics, ensure_topics
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.streams.campaigns import tally
from mailsluice.tenancy.model import parse_tenants

TENANT = f"eng{uuid.uuid4().hex[:6]}"  # its own engagement records on the shared topic
TENANTS = parse_tenants(
    {
        "acme": {"pools": ["default"], "domains": ["acme.test"]},
        "beta": {"pools": ["default"], "domains": ["beta.test"]},
        TENANT: {"pools": ["default"], "domains": ["eng.test"]},
    }
)
METRIC = "mailsluice_streams_campaign_stats_published_total"
SETTINGS = {
    "MAILSLUICE_STREAMS_CAMPAIGN_PUBLISH_S": "0.2",
    "MAILSLUICE_STREAMS_ENGAGEMENT_PUBLISH_S": "0.2",
}


tenant_of = header_tenants(TENANTS)


@pytest.fixture(scope="module")
def app_id(kafka, kafka_settings: KafkaSettings) -> str:
    name = f"test-campaigns-{uuid.uuid4().hex[:8]}"
    prepare(kafka_settings, name)
    return name


@pytest.fixture
def streams(kafka, app_id: str, tmp_path: Path) -> Iterator[StreamsProcess]:
    with running(kafka.bootstrap, app_id, tmp_path, **SETTINGS) as process:
        yield process


@pytest.fixture
async def api(kafka_settings: KafkaSettings) -> AsyncIterator[str]:
    await ensure_topics(kafka_settings, control_topics(kafka_settings))  # the workers' topics
    campaigns = KafkaCampaigns(kafka_settings)
    days = engagement.KafkaEngagement(kafka_settings)
    await campaigns.start()
    await days.start()
    app = FastAPI()
    app.include_router(router(tenant_of, campaigns))
    app.include_router(engagement.router(tenant_of, days))
    try:
        async with serving(app) as url:
            yield url
    finally:
        await days.stop()
        await campaigns.stop()


publish = publish_events


def campaign_events(tenant: str, campaign: str, n: int, tag: str) -> list[Event]:
    """n recipients, one message each (as the API sends), and what happens to them."""
    base: dict[str, Any] = {"tenant": tenant, "campaign": campaign, "pool": "default"}

    def ev(kind: EventType, i: int, **kw: Any) -> Event:
        key = "google#1" if i % 2 else "yahoo"
        fields = {**base, "queue_id": f"{tag}-{i}", "recipient": f"r{i}@x.test", "routing_key": key}
        return Event(type=kind, **{**fields, **kw})

    events = [ev(EventType.RECEPTION, i) for i in range(n)]
    events += [ev(EventType.DELIVERY, i, code=250) for i in range(0, n, 3)]
    events += [ev(EventType.BOUNCE, 1, code=550, enhanced="5.1.1", text="no such user")]
    events += [ev(EventType.BOUNCE, 2, code=552, enhanced="5.2.2", text="mailbox full")]
    events += [ev(EventType.TRANSIENT_FAILURE, i, code=451, enhanced="4.7.1") for i in (4, 5)]
    events += [ev(EventType.DELIVERY, 5, code=250)]
    events += [ev(EventType.REJECTION, n + 1, code=550), ev(EventType.SUPPRESSED, n + 2)]
    events += [ev(EventType.COMPLAINT, 0, reason="abuse"), ev(EventType.UNSUBSCRIBE, 0)]
    return events


async def fetch(url: str, tenant: str, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http:
        got = await http.get(f"{url}{path}", headers={"x-tenant": tenant})
        return got.status, await got.json(content_type=None)


async def campaign(url: str, tenant: str, campaign_id: str) -> tuple[int, dict[str, Any]]:
    status, body = await fetch(url, tenant, f"/v1/campaigns/{campaign_id}")
    return status, body


async def counted(
    url: str, tenant: str, expected: CampaignStats, streams: StreamsProcess
) -> dict[str, Any]:
    """The campaign's stats once the last event is in: every count as `tally` finds them."""
    want = {
        "accepted": expected.accepted,
        "delivered": expected.delivered,
        "deferred": expected.deferred,
        "unsubscribes": expected.unsubscribes,
    }

    path = f"/v1/campaigns/{expected.campaign}"

    def check(body: Any) -> bool:
        return {k: body["counts"][k] for k in want} == want

    found: dict[str, Any] = await until(url, tenant, path, check, streams)
    return found


async def until(url: str, tenant: str, path: str, check: Any, streams: StreamsProcess) -> Any:
    """The body of `path` once check(body) holds."""

    async def seen() -> Any:
        status, body = await fetch(url, tenant, path)
        return body if status == 200 and check(body) else None

    found = await eventually(
        seen, within=90, interval=0.2, what=f"{path} counted", detail=streams.tail
    )
    assert found is not None
    return found


async def test_a_campaigns_events_come_back_as_its_stats(
    streams: StreamsProcess, api: str, kafka_settings: KafkaSettings
) -> None:
    cid = f"spring-{uuid.uuid4().hex[:6]}"
    ours = campaign_events("acme", cid, 12, f"a{cid}")
    theirs = campaign_events("beta", cid, 3, f"b{cid}")  # the same id, another tenant
    await publish(kafka_settings, ours + theirs)
    expected = tally(ours)[f"acme|{cid}"]
    body = await counted(api, "acme", expected, streams)
    assert body["counts"] == {
        "requested": 14,
        "accepted": 12,
        "rejected": 1,
        "suppressed": 1,
        "delivered": 5,  # 0, 3, 6, 9 and 5 after its deferral
        "deferred": 1,  # 4
        "bounced": {"hard": 1, "soft": 1},
        "expired": 0,
        "complaints": 1,
        "unsubscribes": 1,
        "opens": {"all": 0, "human": 0},  # no tracked mail
        "clicks": {"all": 0, "human": 0},
        "every_link": 0,
    }
    assert body["pending"] == expected.pending_total == 5  # 12 - 5 delivered - 2 bounced
    assert body["pending_by_destination"] == expected.pending == {"google": 2, "yahoo": 3}
    assert body["eta_seconds"] is not None  # no worker status: the assumed rate
    beta = await counted(api, "beta", tally(theirs)[f"beta|{cid}"], streams)
    assert beta["counts"]["delivered"] == 2  # its own: 0, and 5 after its deferral
    status, problem = await campaign(api, "beta", f"none-{cid}")
    assert status == 404 and problem["title"] == "Campaign not found"
    metrics = get(streams.url("/metrics"))[1]
    published = [line for line in metrics.splitlines() if line.startswith(METRIC + " ")]
    assert published and float(published[0].split()[1]) >= 2, metrics


async def test_a_restarted_processor_resumes_its_counts(
    kafka, app_id: str, api: str, kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    cid = f"resume-{uuid.uuid4().hex[:6]}"
    first = campaign_events("acme", cid, 6, f"r1{cid}")
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    with running(kafka.bootstrap, app_id, tmp_path / "one", **SETTINGS) as streams:
        await publish(kafka_settings, first)
        await counted(api, "acme", tally(first)[f"acme|{cid}"], streams)
    more = campaign_events("acme", cid, 4, f"r2{cid}")
    expected = tally(first + more)[f"acme|{cid}"]
    with running(kafka.bootstrap, app_id, tmp_path / "two", **SETTINGS) as streams:
        await publish(kafka_settings, more)
        body = await counted(api, "acme", expected, streams)
    assert body["counts"]["delivered"] == expected.delivered == 2 + 2 + 1 + 1
    assert body["counts"]["deferred"] == expected.deferred
    assert body["pending"] == expected.pending_total


# --- engagement -------------------------------------------------------------------------------


def engagement_events(campaign: str, tag: str, now: float) -> list[Event]:
    """10 delivered; 6 opened by a privacy proxy, 4 of them by a person too; a person's click
    (q0), a scanner's (q2) and an every-link burst (q1)."""

    def ev(kind: EventType, i: int, **kw: Any) -> Event:
        fields: dict[str, Any] = {
            "tenant": TENANT,
            "campaign": campaign,
            "pool": "default",
            "queue_id": f"{tag}-{i}",
            "recipient": f"r{i}@x.test",
            "routing_key": "google#1" if i % 2 else "yahoo",
            "ts": now,
        }
        if kind is not EventType.DELIVERY:
            fields["sent_at"] = now - 30
        return Event(type=kind, **{**fields, **kw})

    events = [ev(EventType.DELIVERY, i, code=250, ts=now - 30) for i in range(10)]
    events += [ev(EventType.OPEN, i, machine="privacy_proxy") for i in range(6)]
    events += [ev(EventType.OPEN, i, ts=now + 5) for i in range(4)]
    events += [ev(EventType.CLICK, 0, ts=now + 10, link_index=0)]
    events += [ev(EventType.CLICK, 2, ts=now + 10, link_index=0, machine="scanner")]
    events += [ev(EventType.CLICK, 1, ts=now + 10 + n * 0.4, link_index=n) for n in range(4)]
    return events


async def test_opens_and_clicks_come_back_as_campaign_and_provider_figures(
    streams: StreamsProcess, api: str, kafka_settings: KafkaSettings
) -> None:
    cid = f"eng-{uuid.uuid4().hex[:6]}"
    events = engagement_events(cid, f"e{cid}", time.time())
    await publish(kafka_settings, events)
    expected = tally(events)[f"{TENANT}|{cid}"]
    body = await until(
        api,
        TENANT,
        f"/v1/campaigns/{cid}",
        lambda b: b["counts"]["every_link"] == 1 and b["counts"]["clicks"]["all"] == 3,
        streams,
    )
    counts = body["counts"]
    assert counts["delivered"] == expected.delivered == 10
    assert (
        counts["opens"]
        == {"all": 6, "human": 4}
        == {
            "all": expected.opens,
            "human": expected.opens_human,
        }
    )
    assert counts["clicks"] == {"all": 3, "human": 1}  # the burst's first click taken back
    assert body["rates"]["human"] == {
        "open_rate": 0.4,
        "click_rate": 0.1,
        "click_to_open_rate": 0.25,
    }
    assert body["rates"]["all"]["click_to_open_rate"] == pytest.approx(0.5)
    days = await until(
        api,
        TENANT,
        "/v1/engagement?window=1d",
        lambda b: b["total"]["every_link"] == 1 and b["total"]["clicks"]["all"] == 3,
        streams,
    )
    assert days["total"]["delivered"] == 10 and days["total"]["opens"]["human"] == 4
    google, yahoo = days["providers"]["google"], days["providers"]["yahoo"]
    assert (google["delivered"], google["opens"], google["clicks"]) == (
        5,
        {"all": 3, "human": 2},  # q1, q3, q5; people on q1, q3
        {"all": 1, "human": 0},  # q1's burst
    )
    assert (yahoo["opens"], yahoo["clicks"]) == ({"all": 3, "human": 2}, {"all": 2, "human": 1})


async def test_every_engagement_panel_has_data_in_prometheus(
    streams: StreamsProcess, kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    prom_port = free_port()
    log = tmp_path / "prometheus.log"
    prom = start_prometheus(tmp_path, prom_port, {"streams": streams.port}, log)
    try:
        cid = f"prom-{uuid.uuid4().hex[:6]}"
        await publish_events(kafka_settings, engagement_events(cid, f"p{cid}", time.time()))
        checked = await panels_with_data(
            f"http://127.0.0.1:{prom_port}",
            ["deliverability"],
            lambda: tails([log]) + streams.tail(),
            # the other panels are the delivery workers' (tests/observability)
            lambda exprs: not all("mailsluice_streams_" in e for e in exprs),
            within=90,
        )
        assert checked >= 12
    finally:
        stop(prom)
