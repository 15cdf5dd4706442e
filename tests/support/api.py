"""The HTTP API in tests: test tenants and keys, request bodies, the app served over real HTTP
(uvicorn on 127.0.0.1, port 0) with Kafka replaced by a list (`Written`), and the whole
ApiService on the real broker (`running`)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from fastapi import APIRouter, FastAPI, Header, HTTPException
from fastapi.testclient import TestClient

from mailsluice.api.app import ApiState, build_app
from mailsluice.api.idempotency import IdempotencyBook
from mailsluice.api.send import Sender, SendLimits
from mailsluice.api.service import ApiService, renderer_of
from mailsluice.api.settings import ApiSettings
from mailsluice.api.templates import TemplateStore, templates_router
from mailsluice.contracts.suppressions import Scope, Suppression
from mailsluice.kafka.producers import Send
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.observability.web import WebServer
from mailsluice.policy.rollup import default_rollup
from mailsluice.tenancy.keys import digest_of
from mailsluice.tenancy.model import Tenant, parse_tenants
from mailsluice.tenancy.quota import QuotaBook
from mailsluice.tenancy.registry import Registry

ACME_KEY = "ms_acmekey1_" + "A" * 43
BETA_KEY = "ms_betakey1_" + "B" * 43
SMALL_KEY = "ms_smallkey_" + "C" * 43
TENANTS = {
    "acme": {
        "pools": ["default", "bulk"],
        "domains": ["acme.test", "*.acme.test"],
        "api_keys": [{"id": "acmekey1", "hash": digest_of(ACME_KEY)}],
    },
    "beta": {
        "pools": ["default"],
        "domains": ["beta.test"],
        "api_keys": [{"id": "betakey1", "hash": digest_of(BETA_KEY)}],
        "tracking": "opens",  # its default when a request does not say
    },
    "small": {
        "pools": ["default"],
        "domains": ["small.test"],
        "api_keys": [{"id": "smallkey", "hash": digest_of(SMALL_KEY)}],
        "quotas": {"per_hour": 5},
    },
}


def registry() -> Registry:
    return Registry(tenants=parse_tenants({"tenants": TENANTS}))


def auth(key: str = ACME_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@dataclass
class Written:
    """What the app "wrote to Kafka": each publish's records; `fail` makes the next ones fail."""

    publishes: list[list[Send]] = field(default_factory=list)
    kept: list[tuple[bytes, bytes]] = field(default_factory=list)
    fail: bool = False
    suppressed: dict[tuple[str, str], Suppression] = field(default_factory=dict)
    hold: asyncio.Event | None = None  # publishes wait for it when set
    held: asyncio.Event = field(default_factory=asyncio.Event)  # a publish is waiting

    async def publish(self, sends: Sequence[Send]) -> None:
        if self.hold is not None:
            self.held.set()
            await self.hold.wait()
        if self.fail:
            raise TimeoutError("kafka away")
        self.publishes.append(list(sends))

    async def keep(self, key: bytes, value: bytes) -> None:
        if self.fail:
            raise TimeoutError("kafka away")
        self.kept.append((key, value))

    def match(self, address: str, scopes: Sequence[Scope]) -> Suppression | None:
        for scope in scopes:
            found = self.suppressed.get((scope.label, address.lower()))
            if found is not None:
                return found
        return None

    def queue_records(self) -> list[Send]:
        return [s for sends in self.publishes for s in sends if ".queue." in s[0]]


@dataclass
class Served:
    url: str
    written: Written
    http: aiohttp.ClientSession

    async def post(
        self, body: dict[str, Any], key: str = ACME_KEY, **headers: str
    ) -> tuple[int, dict[str, Any], Any]:
        async with self.http.post(
            f"{self.url}/v1/messages", json=body, headers={**auth(key), **headers}
        ) as resp:
            return resp.status, await resp.json(content_type=None), resp.headers


def app_settings(**overrides: Any) -> ApiSettings:
    return ApiSettings.model_validate({"max_render_s": 2.0, **overrides})


@contextlib.asynccontextmanager
async def serve(settings: ApiSettings) -> AsyncIterator[Served]:
    written = Written()
    sender = Sender(
        renderer=renderer_of(settings),
        rollup=default_rollup(),
        match=written.match,
        quota=QuotaBook(),
        publish=written.publish,
        limits=SendLimits(
            settings.max_message_size, settings.max_attachment_bytes, settings.max_data_bytes
        ),
        templates=(store := TemplateStore(written.keep)),
    )
    state = ApiState(registry(), sender, IdempotencyBook(written.keep), settings.max_body_bytes)
    app = build_app(state, [templates_router()])
    app.state.templates = store
    server = WebServer(app, "127.0.0.1", 0, name="api")
    await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            yield Served(f"http://127.0.0.1:{server.port}", written, http)
    finally:
        await server.stop()


def message(count: int = 1, **extra: Any) -> dict[str, Any]:
    """A valid request body from acme with `count` recipients."""
    return {
        "from": {"email": "news@acme.test", "name": "Acme News"},
        "subject": "Hello {{ first }}",
        "text": "Dear {{ first }}, your code is {{ code }}.",
        "recipients": [
            {"to": {"email": f"user{i}@example.com"}, "data": {"first": f"U{i}", "code": i}}
            for i in range(count)
        ],
        **extra,
    }


def service_registry(pool: str) -> Registry:
    """acme (with a webhook endpoint `main`) and beta, sending from `pool`."""
    hook = {
        "id": "main",
        "url": "https://hooks.acme.test/mailsluice",
        "events": ["delivered", "bounce"],
        "secrets": ["whsec_" + base64.b64encode(b"k" * 32).decode()],
    }
    acme = {**TENANTS["acme"], "pools": [pool], "domains": ["acme.test"], "webhooks": [hook]}
    beta = {**TENANTS["beta"], "pools": [pool]}
    return Registry(tenants=parse_tenants({"acme": acme, "beta": beta}))


@contextlib.asynccontextmanager
async def running(kafka_settings: KafkaSettings, pool: str) -> AsyncIterator[ApiService]:
    """An ApiService on 127.0.0.1 (any port) for acme's `pool`, without operator endpoints."""
    settings = ApiSettings.model_validate({"listen_host": "127.0.0.1", "listen_port": 0})
    service = ApiService(settings, kafka_settings, service_registry(pool), ops=False)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


def header_tenants(tenants: Mapping[str, Tenant]) -> Callable[..., Tenant]:
    """A FastAPI dependency standing in for API-key authentication in router tests: the
    tenant the X-Tenant header names, 401 otherwise."""

    def tenant_of(x_tenant: str = Header("")) -> Tenant:
        found = tenants.get(x_tenant)
        if found is None:
            raise HTTPException(401, "unauthenticated")
        return found

    return tenant_of


@contextlib.contextmanager
def router_client(routes: APIRouter) -> Iterator[TestClient]:
    """FastAPI's TestClient on an app of one router."""
    app = FastAPI()
    app.include_router(routes)
    with TestClient(app) as client:
        yield client
