"""`/v1/suppressions`: a tenant lists, adds and removes suppression entries in the scopes it
owns, over the compacted topic the CLI uses (mailsluice.suppressions).

A tenant owns its tenant scope (`tenant:NAME`), its lists (`list:NAME/LIST`) and the domain
scopes of the sender domains it owns (`domain:D`); never `global` nor another tenant's. Listing
shows only those scopes' entries; a write to any other scope is a 403 problem.

Reads come from a SuppressionStore (the topic followed live); writes wait for Kafka's
acknowledgement (acks=all), so a 201 or 204 means the entry is on the topic. A write shows in
the listing once the store has read it back (milliseconds). DELETE writes the tombstone
whether or not the store holds the entry yet: removing is idempotent, and an entry added a
moment ago may not be read back yet.

Build: `router(tenant_dep, store, writer)`; `tenant_dep` is the FastAPI dependency that
authenticates the request and returns its Tenant.

Annotations are evaluated (no `from __future__ import annotations`): the routes' dependency
on `tenant_dep` is a closure FastAPI must see.
"""

import base64
import binascii
import json
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Body, Depends, Query, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from mailsluice.api.problems import MEDIA_TYPE, problem
from mailsluice.contracts.suppressions import (
    Scope,
    ScopeKind,
    Suppression,
    encode_suppression,
    suppression_key,
)
from mailsluice.contracts.topics import SUPPRESSIONS_TOPIC
from mailsluice.kafka.producers import Send
from mailsluice.tenancy.model import Tenant

SOURCE = "api"
MAX_ENTRIES = 1000  # per POST
MAX_LIMIT = 1000


class Entries(Protocol):
    def entries(self, scope: Scope | None = None) -> list[Suppression]: ...


class Writer(Protocol):
    async def add(self, address: str, reason: str, scope: Scope) -> Suppression: ...

    async def remove(self, address: str, scope: Scope) -> None: ...


class TopicWriter:
    """Writes entries and tombstones through `publish` (the API service's: acks=all, bounded,
    the producer replaced after a failure)."""

    def __init__(self, publish: Callable[[Sequence[Send]], Awaitable[None]]) -> None:
        self.publish = publish

    async def add(self, address: str, reason: str, scope: Scope) -> Suppression:
        entry = Suppression(
            address=address.strip(), reason=reason, source=SOURCE, scope=scope.label
        )
        key = suppression_key(address, scope)
        await self.publish([(SUPPRESSIONS_TOPIC, encode_suppression(entry), key, ())])
        return entry

    async def remove(self, address: str, scope: Scope) -> None:
        await self.publish([(SUPPRESSIONS_TOPIC, None, suppression_key(address, scope), ())])


def owns(tenant: Tenant, scope: Scope) -> bool:
    """Whether the tenant may see and change entries of `scope`."""
    if scope.kind in (ScopeKind.TENANT, ScopeKind.LIST):
        return scope.tenant == tenant.name
    if scope.kind is ScopeKind.DOMAIN:
        return tenant.owned.owns_domain(scope.domain)
    return False


# --- bodies ------------------------------------------------------------------------------------


class NewEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    address: str = Field(min_length=3, max_length=254, pattern=r"^[^@\s]+@[^@\s]+$")
    scope: str = Field("", description="A scope the tenant owns; default its tenant scope.")
    reason: str = Field("manual", min_length=1, max_length=100)


class NewEntries(BaseModel):
    model_config = ConfigDict(extra="forbid")

    entries: list[NewEntry] = Field(min_length=1, max_length=MAX_ENTRIES)


class Entry(BaseModel):
    address: str
    scope: str
    reason: str
    source: str  # who added it: api, cli, streams (bounces, complaints, unsubscribes), ...
    created_at: datetime


class EntryPage(BaseModel):
    data: list[Entry]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null: last")


class Added(BaseModel):
    data: list[Entry]


PROBLEMS: dict[int | str, dict[str, Any]] = {
    code: {"description": what, "content": {MEDIA_TYPE: {}}}
    for code, what in ((400, "Invalid parameter"), (403, "A scope the tenant does not own"))
}


def shown(entry: Suppression) -> Entry:
    return Entry(
        address=entry.address,
        scope=entry.scope,
        reason=entry.reason,
        source=entry.source,
        created_at=datetime.fromtimestamp(entry.ts, UTC),
    )


# --- paging ------------------------------------------------------------------------------------


def _order(entry: Suppression) -> tuple[str, str]:
    return entry.address.strip().lower(), entry.scope


def encode_cursor(entry: Suppression) -> str:
    raw = json.dumps(list(_order(entry))).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, str]:
    """The (address, scope) a cursor resumes after; ValueError for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        address, scope = json.loads(raw)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise ValueError("not a cursor this API gave") from exc
    if not isinstance(address, str) or not isinstance(scope, str):
        raise ValueError("not a cursor this API gave")
    return address, scope


@dataclass(frozen=True)
class Filters:
    scope: Scope | None = None
    prefix: str = ""
    reason: str = ""
    source: str = ""
    since: float = 0.0
    after: tuple[str, str] | None = None

    def keep(self, entry: Suppression) -> bool:
        return (
            (self.scope is None or entry.scope == self.scope.label)
            and entry.address.strip().lower().startswith(self.prefix)
            and (not self.reason or entry.reason == self.reason)
            and (not self.source or entry.source == self.source)
            and entry.ts >= self.since
            and (self.after is None or _order(entry) > self.after)
        )


def page(
    entries: Iterable[Suppression], tenant: Tenant, filters: Filters, limit: int
) -> tuple[list[Suppression], str | None]:
    """One page of the tenant's entries matching `filters`, in (address, scope) order, and the
    cursor of the next page (None on the last)."""

    def visible() -> Iterator[Suppression]:
        for entry in entries:
            scope = _scope_or_none(entry.scope)
            if scope is not None and owns(tenant, scope) and filters.keep(entry):
                yield entry

    found = sorted(visible(), key=_order)
    chosen = found[:limit]
    more = len(found) > limit
    return chosen, encode_cursor(chosen[-1]) if more and chosen else None


def _scope_or_none(label: str) -> Scope | None:
    try:
        return Scope.parse(label)
    except ValueError:
        return None


# --- the router --------------------------------------------------------------------------------


class ListQuery(BaseModel):
    """The listing's query parameters."""

    model_config = ConfigDict(extra="forbid")

    scope: str = Field("", max_length=300, description="Only this scope (one the tenant owns)")
    address_prefix: str = Field("", max_length=254)
    reason: str = Field("", max_length=100)
    source: str = Field("", max_length=100)
    since: datetime | None = Field(None, description="Added at or after")
    cursor: str = Field("", max_length=2000, description="next_cursor of the previous page")
    limit: int = Field(100, ge=1, le=MAX_LIMIT)


def owned_scope(tenant: Tenant, label: str, where: str = "", **extra: Any) -> Scope | JSONResponse:
    """The scope `label` names when the tenant owns it, else the problem response."""
    scope = _scope_or_none(label)
    if scope is None:
        return problem(400, "Invalid scope", f"{where}not a scope: {label[:200]!r}", **extra)
    if not owns(tenant, scope):
        detail = f"{where}the tenant does not own {scope.label}"
        return problem(403, "Scope not owned", detail, **extra)
    return scope


def listing(tenant: Tenant, store: Entries, query: ListQuery) -> EntryPage | JSONResponse:
    chosen = owned_scope(tenant, query.scope) if query.scope else None
    if isinstance(chosen, JSONResponse):
        return chosen
    try:
        after = decode_cursor(query.cursor) if query.cursor else None
    except ValueError as exc:
        return problem(400, "Invalid cursor", str(exc))
    filters = Filters(
        scope=chosen,
        prefix=query.address_prefix.strip().lower(),
        reason=query.reason,
        source=query.source,
        since=query.since.timestamp() if query.since is not None else 0.0,
        after=after,
    )
    entries, next_cursor = page(store.entries(), tenant, filters, query.limit)
    return EntryPage(data=[shown(e) for e in entries], next_cursor=next_cursor)


async def adding(tenant: Tenant, writer: Writer, body: NewEntries) -> Added | JSONResponse:
    """Every entry's scope checked first: one not owned writes nothing."""
    scopes = []
    for index, item in enumerate(body.entries):
        label = item.scope or tenant.scope.label
        scope = owned_scope(tenant, label, f"entries[{index}].scope: ", index=index)
        if isinstance(scope, JSONResponse):
            return scope
        scopes.append(scope)
    added = [
        await writer.add(item.address, item.reason, scope)
        for item, scope in zip(body.entries, scopes, strict=True)
    ]
    return Added(data=[shown(e) for e in added])


def router(tenant_dep: Callable[..., Tenant], store: Entries, writer: Writer) -> APIRouter:
    routes = APIRouter(tags=["suppressions"])
    TenantDep = Annotated[Tenant, Depends(tenant_dep)]

    @routes.get(
        "/v1/suppressions",
        response_model=EntryPage,
        responses=PROBLEMS,
        summary="List the tenant's suppression entries",
    )
    async def list_suppressions(tenant: TenantDep, query: Annotated[ListQuery, Query()]) -> Any:
        return listing(tenant, store, query)

    @routes.post(
        "/v1/suppressions",
        status_code=201,
        response_model=Added,
        responses=PROBLEMS,
        summary="Add suppression entries",
    )
    async def add_suppressions(tenant: TenantDep, body: Annotated[NewEntries, Body()]) -> Any:
        return await adding(tenant, writer, body)

    @routes.delete(
        "/v1/suppressions/{scope:path}/{address}",
        status_code=204,
        response_model=None,
        responses=PROBLEMS,
        summary="Remove an address from a scope",
    )
    async def remove_suppression(tenant: TenantDep, scope: str, address: str) -> Any:
        found = owned_scope(tenant, scope)
        if isinstance(found, JSONResponse):
            return found
        if "@" not in address or len(address) > 254:
            return problem(400, "Invalid address", "an address is local@domain")
        await writer.remove(address, found)
        return Response(status_code=204)

    return routes
