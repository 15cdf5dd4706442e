"""Engagement hygiene through the real pipeline: deliveries, opens and clicks written to
mailsluice.events over a simulated 95 days (their ts), applied by `mailsluice streams` (a
subprocess): an address delivered to 10 times over 90 days without a person's open is
suppressed as `unengaged` in its tenant's scope where the tenant's policy is on, one with a
human open is not, and one of a tenant whose policy is off is only listed by the dry run
(`mailsluice engagement report` and GET /v1/engagement/unengaged). The API grades a message to
an engaged recipient from mailsluice.engagement, and a suppressed address that opens again is
lifted."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from support.api import auth, running
from support.delivery_worker import new_pool, setup_pool
from support.events import publish_events
from support.eventually import eventually
from support.paths import REPO
from support.streams_process import StreamsProcess, prepare
from support.streams_process import running as streams_running
from support.topic_reader import read_topic

from mailsluice.api.service import ApiService
from mailsluice.contracts.engagement import ACTIVE, DAY_S, NEW
from mailsluice.contracts.envelope import envelope_from_headers
from mailsluice.contracts.events import Event, EventType
from mailsluice.contracts.suppressions import Scope
from mailsluice.contracts.topics import queue_topic
from mailsluice.engagement.store import EngagementStore
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.suppression.store import SuppressionStore

ACME = Scope.parse("tenant:acme")
BETA = Scope.parse("tenant:beta")
# acme has switched the policy on; beta has not (the default, MAILSLUICE_HYGIENE_ENABLED, is off)
TENANTS = {
    "tenants": {
        "acme": {"pools": ["default"], "domains": ["acme.test"], "hygiene": {"enabled": True}},
        "beta": {"pools": ["default"], "domains": ["beta.test"]},
    }
}


@pytest.fixture(scope="module")
def app_id(kafka, kafka_settings: KafkaSettings) -> str:
    name = f"test-hygiene-{uuid.uuid4().hex[:8]}"
    prepare(kafka_settings, name)
    return name


@pytest.fixture
def tenants_file(tmp_path: Path) -> Path:
    path = tmp_path / "tenants.yaml"
    path.write_text(yaml.safe_dump(TENANTS))
    return path


@pytest.fixture
def streams(kafka, app_id: str, tmp_path: Path, tenants_file: Path) -> Iterator[StreamsProcess]:
    env = {"MAILSLUICE_TENANTS_FILE": str(tenants_file)}
    with streams_running(kafka.bootstrap, app_id, tmp_path, **env) as process:
        yield process


@pytest.fixture
async def stores(
    streams: StreamsProcess, kafka_settings: KafkaSettings
) -> AsyncIterator[tuple[SuppressionStore, EngagementStore]]:
    suppressions = SuppressionStore(kafka_settings, client_id="test-hygiene-suppressions")
    engagement = EngagementStore(kafka_settings, client_id="test-hygiene-engagement")
    await suppressions.start()
    await engagement.start()
    try:
        yield suppressions, engagement
    finally:
        await engagement.stop()
        await suppressions.stop()


def history(tenant: str, address: str, start: float, *, opened: float = 0.0) -> list[Event]:
    """Ten deliveries ten days apart from `start`, with a machine open after the first and,
    when `opened`, a person's open at that time."""
    base: dict[str, Any] = {"tenant": tenant, "recipient": address, "pool": "default"}
    events = [
        Event(type=EventType.DELIVERY, ts=start + i * 10 * DAY_S, queue_id=f"q{i}", **base)
        for i in range(10)
    ]
    proxy = Event(type=EventType.OPEN, ts=start + DAY_S, machine="privacy_proxy", **base)
    events.insert(1, proxy)
    if opened:
        events.append(Event(type=EventType.OPEN, ts=opened, queue_id="q8", **base))
        events.sort(key=lambda e: e.ts)
    return events


async def report(kafka: Any, tenants_file: Path, tenant: str) -> dict[str, Any]:
    """`mailsluice engagement report --tenant T --json`, run as an operator would."""
    proc = await asyncio.create_subprocess_exec(
        str(REPO / ".venv" / "bin" / "mailsluice"),
        "engagement",
        "report",
        "--tenant",
        tenant,
        "--json",
        env={
            "PATH": "/usr/bin:/bin",
            "MAILSLUICE_KAFKA_BOOTSTRAP": kafka.bootstrap,
            "MAILSLUICE_TENANTS_FILE": str(tenants_file),
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    body: dict[str, Any] = json.loads(out)
    return body


async def test_unengaged_addresses_are_suppressed_under_the_policy_and_engaged_ones_not(
    kafka: Any,
    kafka_settings: KafkaSettings,
    tenants_file: Path,
    stores: tuple[SuppressionStore, EngagementStore],
) -> None:
    suppressions, engagement = stores
    tag = uuid.uuid4().hex[:8]
    quiet, fan, other = f"quiet-{tag}@x.test", f"fan-{tag}@x.test", f"quiet-{tag}@y.test"
    start = time.time() - 95 * DAY_S  # deliveries on days 0..90, the last five days ago
    for tenant, address, opened in (
        ("acme", quiet, 0.0),
        ("acme", fan, start + 85 * DAY_S),
        ("beta", other, 0.0),
    ):
        # one key per address: its events in one partition, in order
        await publish_events(
            kafka_settings, history(tenant, address, start, opened=opened), key=address.encode()
        )

    def applied() -> bool:
        records = [
            engagement.get(t, a) for t, a in (("acme", quiet), ("acme", fan), ("beta", other))
        ]
        return all(r is not None and r.last_delivered >= start + 90 * DAY_S for r in records)

    await eventually(applied, within=60, what="every history applied")
    await suppressions.wait_for(lambda: suppressions.match(quiet, [ACME]) is not None, 20)
    entry = suppressions.match(quiet, [ACME])
    assert entry is not None and (entry.reason, entry.source) == ("unengaged", "streams")
    assert suppressions.match(quiet, [Scope()]) is None  # the tenant's scope only
    assert suppressions.match(fan, [ACME]) is None
    assert suppressions.match(other, [BETA]) is None  # beta's policy is off
    fan_record = engagement.get("acme", fan)
    assert fan_record is not None
    assert (fan_record.deliveries, fan_record.last_engaged) == (1, start + 85 * DAY_S)

    # the dry run: acme lists the suppressed address only; beta what it would suppress
    acme = await report(kafka, tenants_file, "acme")
    assert [(r["address"], r["suppressed"]) for r in acme["listed"]] == [(quiet, True)]
    assert acme["policy"] == {"enabled": True, "deliveries": 10, "days": 90}
    beta = await report(kafka, tenants_file, "beta")
    assert [(r["address"], r["deliveries"]) for r in beta["listed"] if tag in r["address"]] == [
        (other, 10)
    ]

    # a person opens an older message: the suppression is lifted
    back = Event(type=EventType.OPEN, tenant="acme", recipient=quiet, queue_id="q9")
    await publish_events(kafka_settings, [back], key=quiet.encode())
    await suppressions.wait_for(lambda: suppressions.match(quiet, [ACME]) is None, 20)


@pytest.fixture
async def api(
    kafka_settings: KafkaSettings, streams: StreamsProcess
) -> AsyncIterator[tuple[ApiService, str]]:
    pool = new_pool()
    await setup_pool(kafka_settings, pool)
    async with running(kafka_settings, pool) as service:
        yield service, pool


async def test_the_api_grades_messages_and_reports_the_unengaged(
    kafka_settings: KafkaSettings, api: tuple[ApiService, str]
) -> None:
    service, pool = api
    tag = uuid.uuid4().hex[:8]
    fan, quiet, stranger = f"fan-{tag}@x.test", f"quiet-{tag}@x.test", f"new-{tag}@x.test"
    start = time.time() - 95 * DAY_S
    await publish_events(kafka_settings, history("acme", fan, start, opened=time.time() - DAY_S))
    await publish_events(kafka_settings, history("acme", quiet, start), key=quiet.encode())

    def seen() -> bool:
        engaged, ignored = (service.grades.get("acme", a) for a in (fan, quiet))
        return bool(engaged and engaged.last_engaged and ignored and ignored.deliveries == 10)

    await eventually(seen, within=60, what="the API's engagement store to hear of both")
    body = {
        "from": {"email": "news@acme.test"},
        "subject": "hi",
        "text": "hello",
        "recipients": [{"to": {"email": fan}}, {"to": {"email": stranger}}],
    }
    base = f"http://127.0.0.1:{service.port}"
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/v1/messages", json=body, headers=auth()) as resp:
            answer = await resp.json()
            assert resp.status == 202, answer
        async with http.get(f"{base}/v1/engagement/unengaged", headers=auth()) as resp:
            dry = await resp.json()
            assert resp.status == 200, dry
    ids = {r["id"] for r in answer["results"]}
    records = await read_topic(
        kafka_settings,
        queue_topic(pool),
        lambda r: envelope_from_headers(r.headers).queue_id in ids,
        expect=2,
    )
    grades = {
        envelope_from_headers(r.headers).recipients[0]: envelope_from_headers(r.headers).grade
        for r in records
    }
    assert grades == {fan: ACTIVE, stranger: NEW}
    listed = [r["address"] for r in dry["listed"] if tag in r["address"]]
    assert listed == [quiet]  # the API's default policy is off: a dry run
    assert dry["policy"]["enabled"] is False
