"""Quota counts shared across replicas through the real Kafka: two books in two "replicas"
together refuse past the tenant's quota, and a replica that starts later reads what the others
accepted before it accepts anything."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import pytest
from support.eventually import eventually

from mailsluice.kafka.settings import KafkaSettings
from mailsluice.tenancy.model import Quotas
from mailsluice.tenancy.quota import QuotaBook
from mailsluice.tenancy.usage import UsageSharing

# One fixed instant: the quota windows never roll over during the test.
NOW = float(int(time.time()) // 3600 * 3600 + 60)
QUOTAS = Quotas(per_hour=5, per_day=None)


@pytest.fixture
async def replicas(kafka_settings: KafkaSettings) -> AsyncIterator[list[UsageSharing]]:
    started: list[UsageSharing] = []

    async def start(name: str) -> UsageSharing:
        # reports only when told (report()), so the test says when counts travel
        shared = UsageSharing(
            QuotaBook(), kafka_settings, replica=name, clock=lambda: NOW, interval_s=3600
        )
        await shared.start()
        started.append(shared)
        return shared

    run = uuid.uuid4().hex[:8]
    await start(f"a-{run}")
    await start(f"b-{run}")
    yield started
    for shared in started:
        await shared.stop()
    started.clear()


async def test_two_replicas_together_refuse_past_the_quota(
    kafka_settings: KafkaSettings, replicas: list[UsageSharing]
) -> None:
    a, b = replicas
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    assert a.book.admit(tenant, QUOTAS, 3, NOW) is None
    a.book.charge(tenant, 3, NOW)
    assert await a.report() == 2  # its hour and its day

    await eventually(
        lambda: b.book.used(tenant, "hour", int(NOW) // 3600 * 3600) == 3,
        within=15,
        what="replica b sees what a accepted",
    )
    assert b.book.admit(tenant, QUOTAS, 2, NOW) is None
    over = b.book.admit(tenant, QUOTAS, 3, NOW)
    assert over is not None and over.used == 3 and over.window == "hour"
    b.book.charge(tenant, 2, NOW)
    await b.report()
    await eventually(
        lambda: a.book.admit(tenant, QUOTAS, 1, NOW) is not None,
        within=15,
        what="replica a refuses once b's count arrives",
    )

    late = UsageSharing(QuotaBook(), kafka_settings, replica=f"c-{tenant}", clock=lambda: NOW)
    await late.start()  # read to the end before it serves anything
    try:
        over = late.book.admit(tenant, QUOTAS, 1, NOW)
        assert over is not None and over.used == 5
    finally:
        await late.stop()
