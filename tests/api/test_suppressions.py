"""`/v1/suppressions` (api/suppressions.py) with FastAPI's TestClient and an in-memory store:
a tenant sees and changes only its own scopes, paging, filters, problem responses."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from support.api import header_tenants

from mailsluice.api.suppressions import decode_cursor, owns, router
from mailsluice.contracts.suppressions import (
    Scope,
    Suppression,
    encode_suppression,
    suppression_key,
)
from mailsluice.suppression.store import Table, apply_record
from mailsluice.tenancy.model import parse_tenants

TENANTS = parse_tenants(
    {
        "acme": {"pools": ["default"], "domains": ["acme.test", "*.acme.test"]},
        "beta": {"pools": ["default"], "domains": ["beta.test"]},
    }
)


class MemoryStore:
    """The store's table and its `entries`, fed the records a writer produces."""

    def __init__(self) -> None:
        self.table: Table = {}
        self.writes: list[tuple[str, str | None]] = []

    def entries(self, scope: Scope | None = None) -> list[Suppression]:
        return [e for e in self.table.values() if scope is None or e.scope == scope.label]

    async def add(self, address: str, reason: str, scope: Scope) -> Suppression:
        entry = Suppression(address=address, reason=reason, source="api", scope=scope.label)
        apply_record(self.table, suppression_key(address, scope), encode_suppression(entry))
        self.writes.append((suppression_key(address, scope).decode(), reason))
        return entry

    async def remove(self, address: str, scope: Scope) -> None:
        apply_record(self.table, suppression_key(address, scope), None)
        self.writes.append((suppression_key(address, scope).decode(), None))

    def put(
        self,
        address: str,
        scope: str,
        *,
        reason: str = "manual",
        source: str = "cli",
        ts: float = 1000.0,
    ) -> None:
        entry = Suppression(address=address, reason=reason, source=source, scope=scope, ts=ts)
        apply_record(
            self.table, suppression_key(address, Scope.parse(scope)), encode_suppression(entry)
        )


tenant_of = header_tenants(TENANTS)


@pytest.fixture
def store() -> MemoryStore:
    s = MemoryStore()
    s.put("g@x.test", "global", reason="hard-bounce", source="streams")
    s.put("a1@x.test", "tenant:acme", ts=2000.0)
    s.put("a2@x.test", "list:acme/news", reason="unsubscribe", source="streams")
    s.put("a3@x.test", "domain:mail.acme.test")
    s.put("b1@x.test", "tenant:beta")
    s.put("b2@x.test", "list:beta/news")
    s.put("b3@x.test", "domain:beta.test")
    return s


@pytest.fixture
def client(store: MemoryStore) -> Iterator[TestClient]:
    app = FastAPI()
    app.include_router(router(tenant_of, store, store))
    with TestClient(app) as c:
        yield c


def listed(client: TestClient, tenant: str, **params: Any) -> list[tuple[str, str]]:
    resp = client.get("/v1/suppressions", params=params, headers={"x-tenant": tenant})
    assert resp.status_code == 200, resp.text
    return [(e["address"], e["scope"]) for e in resp.json()["data"]]


def test_a_tenant_lists_only_its_own_scopes(client: TestClient) -> None:
    assert listed(client, "acme") == [
        ("a1@x.test", "tenant:acme"),
        ("a2@x.test", "list:acme/news"),
        ("a3@x.test", "domain:mail.acme.test"),
    ]
    assert listed(client, "beta") == [
        ("b1@x.test", "tenant:beta"),
        ("b2@x.test", "list:beta/news"),
        ("b3@x.test", "domain:beta.test"),
    ]


def test_asking_for_another_tenants_scope_is_a_403_problem(client: TestClient) -> None:
    for scope in ("tenant:beta", "list:beta/news", "domain:beta.test", "global"):
        resp = client.get("/v1/suppressions", params={"scope": scope}, headers={"x-tenant": "acme"})
        assert resp.status_code == 403, scope
        assert resp.headers["content-type"] == "application/problem+json"
        assert resp.json()["status"] == 403 and "b1@" not in resp.text
    resp = client.get("/v1/suppressions", params={"scope": "bogus"}, headers={"x-tenant": "acme"})
    assert resp.status_code == 400 and resp.json()["title"] == "Invalid scope"


def test_filters(client: TestClient) -> None:
    assert listed(client, "acme", scope="list:acme/news") == [("a2@x.test", "list:acme/news")]
    assert listed(client, "acme", address_prefix="A3") == [("a3@x.test", "domain:mail.acme.test")]
    assert listed(client, "acme", reason="unsubscribe") == [("a2@x.test", "list:acme/news")]
    assert listed(client, "acme", source="streams") == [("a2@x.test", "list:acme/news")]
    since = "1970-01-01T00:25:00+00:00"  # 1500 s
    assert listed(client, "acme", since=since) == [("a1@x.test", "tenant:acme")]


def test_paging_with_a_cursor(client: TestClient, store: MemoryStore) -> None:
    for i in range(25):
        store.put(f"p{i:02d}@x.test", "tenant:acme")
    seen: list[tuple[str, str]] = []
    cursor = ""
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 10, "address_prefix": "p"}
        if cursor:
            params["cursor"] = cursor
        resp = client.get("/v1/suppressions", params=params, headers={"x-tenant": "acme"})
        body = resp.json()
        seen += [(e["address"], e["scope"]) for e in body["data"]]
        pages += 1
        cursor = body["next_cursor"]
        if not cursor:
            break
    assert pages == 3
    assert [a for a, _ in seen] == [f"p{i:02d}@x.test" for i in range(25)]
    bad = client.get("/v1/suppressions", params={"cursor": "!!"}, headers={"x-tenant": "acme"})
    assert bad.status_code == 400
    with pytest.raises(ValueError):
        decode_cursor("bm90IGpzb24")


def test_adding_in_owned_scopes_only(client: TestClient, store: MemoryStore) -> None:
    entries = [
        {"address": "New@x.test"},  # the tenant scope by default
        {"address": "l@x.test", "scope": "list:acme/promo", "reason": "asked"},
        {"address": "d@x.test", "scope": "domain:acme.test"},
    ]
    resp = client.post("/v1/suppressions", json={"entries": entries}, headers={"x-tenant": "acme"})
    assert resp.status_code == 201, resp.text
    assert [e["scope"] for e in resp.json()["data"]] == [
        "tenant:acme",
        "list:acme/promo",
        "domain:acme.test",
    ]
    assert store.writes == [
        ("tenant:acme|new@x.test", "manual"),
        ("list:acme/promo|l@x.test", "asked"),
        ("domain:acme.test|d@x.test", "manual"),
    ]
    assert all(
        e.source == "api" for e in store.entries() if e.address.startswith(("New", "l@", "d@"))
    )


@pytest.mark.parametrize(
    "scope", ["global", "tenant:beta", "list:beta/x", "domain:beta.test", "domain:other.test"]
)
def test_adding_in_a_scope_not_owned_is_a_403_and_writes_nothing(
    client: TestClient, store: MemoryStore, scope: str
) -> None:
    entries = [{"address": "ok@x.test"}, {"address": "x@x.test", "scope": scope}]
    resp = client.post("/v1/suppressions", json={"entries": entries}, headers={"x-tenant": "acme"})
    assert resp.status_code == 403
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.json()["index"] == 1 and "entries[1]" in resp.json()["detail"]
    assert store.writes == []


def test_a_malformed_body_is_refused(client: TestClient, store: MemoryStore) -> None:
    for body in ({"entries": []}, {"entries": [{"address": "no-at"}]}, {"other": 1}):
        resp = client.post("/v1/suppressions", json=body, headers={"x-tenant": "acme"})
        assert resp.status_code == 422, body
    assert store.writes == []


def test_removing(client: TestClient, store: MemoryStore) -> None:
    resp = client.delete("/v1/suppressions/list:acme/news/a2@x.test", headers={"x-tenant": "acme"})
    assert resp.status_code == 204
    assert store.writes == [("list:acme/news|a2@x.test", None)]
    assert ("a2@x.test", "list:acme/news") not in listed(client, "acme")
    resp = client.delete("/v1/suppressions/tenant:beta/b1@x.test", headers={"x-tenant": "acme"})
    assert resp.status_code == 403 and resp.json()["status"] == 403
    resp = client.delete("/v1/suppressions/global/g@x.test", headers={"x-tenant": "acme"})
    assert resp.status_code == 403
    assert listed(client, "beta")[0] == ("b1@x.test", "tenant:beta")
    assert len(store.writes) == 1


def test_unauthenticated_requests_get_nothing(client: TestClient) -> None:
    assert client.get("/v1/suppressions").status_code == 401


def test_ownership_of_scopes() -> None:
    acme = TENANTS["acme"]
    assert owns(acme, Scope.parse("tenant:acme")) and owns(acme, Scope.parse("list:acme/a"))
    assert owns(acme, Scope.parse("domain:acme.test")) and owns(
        acme, Scope.parse("domain:x.acme.test")
    )
    assert not owns(acme, Scope.parse("domain:notacme.test"))
    assert not owns(acme, Scope.parse("global")) and not owns(acme, Scope.parse("tenant:acmex"))
