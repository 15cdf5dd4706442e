"""Kafka away: a POST is answered 503 with Retry-After within the publish timeout (nothing
answered 202 that Kafka did not take), the API is not ready until Kafka answers again, then it
sends again. This module stops and restarts the session's broker; it restarts it in a finally."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from support.api import auth, message, service_registry
from support.delivery_worker import new_pool, setup_pool
from support.eventually import eventually

from mailsluice.api.service import ApiService
from mailsluice.api.settings import ApiSettings


@pytest.fixture
async def api(kafka: Any) -> AsyncIterator[ApiService]:
    ks = kafka.settings(request_timeout_ms=3000)
    pool = new_pool()
    await setup_pool(ks, pool)
    settings = ApiSettings.model_validate(
        {"listen_host": "127.0.0.1", "listen_port": 0, "publish_timeout_s": 2.0}
    )
    service = ApiService(settings, ks, service_registry(pool), ops=False)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


async def post(api: ApiService, body: dict[str, Any]) -> tuple[int, dict[str, str]]:
    url = f"http://127.0.0.1:{api.port}/v1/messages"
    async with aiohttp.ClientSession() as http, http.post(url, json=body, headers=auth()) as resp:
        return resp.status, dict(resp.headers)


async def test_kafka_away_is_503_and_not_ready_until_back(api: ApiService, kafka: Any) -> None:
    await eventually(lambda: api.ready()[0], within=30, what="the API ready", detail=api.ready)
    assert (await post(api, message(2)))[0] == 202
    try:
        await asyncio.to_thread(kafka.stop)
        status, headers = await post(api, message(2))
        assert status == 503
        assert int(headers["Retry-After"]) > 0
        ready, detail = api.ready()
        assert not ready and detail.startswith("kafka:"), detail
    finally:
        await asyncio.to_thread(kafka.start)
    await eventually(lambda: api.ready()[0], within=60, what="ready again", detail=api.ready)
    assert (await post(api, message(2)))[0] == 202
