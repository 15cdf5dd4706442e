"""Campaign stats through the real pipeline: events of a campaign written to mailsluice.events,
counted by `mailsluice streams` (a subprocess), published to mailsluice.campaign-stats and
served by `GET /v1/campaigns/{id}` over HTTP; a restarted processor resumes its counts."""

from __future__ import annotations

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
from support.streams_process import StreamsProcess, get, prepare, running

from mailsluice.api.campaigns import KafkaCampaigns, router
from mailsluice.contracts.campaign_stats import CampaignStats
from mailsluice.contracts.events import Event, EventType
from mailsluice.kafka.admin import control_topics, ensure_topics
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.streams.campaigns import tally
from mailsluice.tenancy.model import parse_tenants

TENANTS = parse_tenants(
    {
        "acme": {"pools": ["default"], "domains": ["acme.test"]},
        "beta": {"pools": ["default"], "domains": ["beta.test"]},
    }
)
METRIC = "mailsluice_streams_campaign_stats_published_total"
SETTINGS = {"MAILSLUICE_STREAMS_CAMPAIGN_PUBLISH_S": "0.2"}


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
    await campaigns.start()
    app = FastAPI()
    app.include_router(router(tenant_of, campaigns))
    try:
        async with serving(app) as url:
            yield url
    finally:
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


async def campaign(url: str, tenant: str, campaign_id: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http:
        got = await http.get(f"{url}/v1/campaigns/{campaign_id}", headers={"x-tenant": tenant})
        return got.status, await got.json(content_type=None)


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

    async def seen() -> dict[str, Any] | None:
        status, body = await campaign(url, tenant, expected.campaign)
        got = {k: body["counts"][k] for k in want} if status == 200 else {}
        return body if got == want else None

    found = await eventually(
        seen, within=90, interval=0.2, what=f"{want} counted", detail=streams.tail
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
        "opens": None,
        "clicks": None,
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
