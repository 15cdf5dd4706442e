"""Stored templates: `POST /v1/templates` saves a new version of a tenant's template (the first
makes version 1), `GET /v1/templates/{id}` reads the latest, `/versions/{n}` any version.

Versions are records of the compacted topic mailsluice.templates (contracts/templates.py),
written with acks before the answer, read at start and followed by every replica. A template
is compiled in the sandbox before it is saved, so a send never meets a syntax error in it.
Two replicas saving the same template at once can make the same version number; the later
write wins (the API numbers versions from what it has read).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mailsluice.api.auth import current_tenant
from mailsluice.api.problems import Problem, invalid, responses
from mailsluice.api.render import Renderer, TemplateInvalid
from mailsluice.contracts.templates import (
    TEMPLATE_ID,
    StoredTemplate,
    decode_template,
    encode_template,
    template_key,
)
from mailsluice.tenancy.model import Tenant

log = logging.getLogger(__name__)

Write = Callable[[bytes, bytes], Awaitable[None]]  # key, value; raises when not acknowledged
MAX_TEMPLATE_CHARS = 1024 * 1024


class TemplateStore:
    """Every version of every tenant's templates, as read from the topic or saved here."""

    def __init__(self, write: Write | None = None) -> None:
        self._write = write
        self._versions: dict[tuple[str, str], dict[int, StoredTemplate]] = {}

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None or value is None:  # versions are never deleted one by one
            return
        try:
            found = decode_template(value)
        except (ValidationError, ValueError):
            log.warning("undecodable template record ignored")
            return
        self._versions.setdefault((found.tenant, found.id), {})[found.version] = found

    def get(self, tenant: str, template_id: str, version: int | None) -> StoredTemplate | None:
        versions = self._versions.get((tenant, template_id), {})
        if not versions:
            return None
        return versions.get(max(versions) if version is None else version)

    async def save(
        self, tenant: str, template_id: str, subject: str, text: str | None, html: str | None
    ) -> StoredTemplate:
        latest = self.get(tenant, template_id, None)
        stored = StoredTemplate(
            tenant=tenant,
            id=template_id,
            version=(latest.version + 1) if latest else 1,
            subject=subject,
            text=text,
            html=html,
        )
        if self._write is not None:
            await self._write(
                template_key(tenant, template_id, stored.version), encode_template(stored)
            )
        self.apply(b"local", encode_template(stored))
        return stored


class TemplateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=TEMPLATE_ID.pattern, description="The template's id (yours).")
    subject: str = Field("", max_length=2000)
    text: str | None = Field(None, max_length=MAX_TEMPLATE_CHARS)
    html: str | None = Field(None, max_length=MAX_TEMPLATE_CHARS)


class TemplateAnswer(BaseModel):
    id: str
    version: int
    subject: str
    text: str | None
    html: str | None
    created: float


def _answer(stored: StoredTemplate) -> TemplateAnswer:
    return TemplateAnswer(
        id=stored.id,
        version=stored.version,
        subject=stored.subject,
        text=stored.text,
        html=stored.html,
        created=stored.ts,
    )


def _store(request: Request) -> TemplateStore:
    store: TemplateStore = request.app.state.templates
    return store


Id = Annotated[str, Path(pattern=TEMPLATE_ID.pattern)]
Caller = Annotated[Tenant, Depends(current_tenant)]


def templates_router() -> APIRouter:
    router = APIRouter(tags=["templates"])

    @router.post(
        "/v1/templates",
        status_code=201,
        response_model=TemplateAnswer,
        responses=responses(401, 422, 503),
    )
    async def save_template(body: TemplateBody, request: Request, tenant: Caller) -> TemplateAnswer:
        if body.text is None and body.html is None:
            raise invalid([{"field": "text", "message": "give text, html or both"}])
        renderer: Renderer = request.app.state.api.sender.renderer
        try:
            renderer.check(body.subject, body.text, body.html)
        except TemplateInvalid as exc:
            raise invalid([{"field": exc.part, "message": exc.message}]) from None
        store = _store(request)
        stored = await store.save(tenant.name, body.id, body.subject, body.text, body.html)
        return _answer(stored)

    @router.get(
        "/v1/templates/{template_id}", response_model=TemplateAnswer, responses=responses(401, 404)
    )
    async def latest_template(template_id: Id, request: Request, tenant: Caller) -> TemplateAnswer:
        return _found(_store(request).get(tenant.name, template_id, None))

    @router.get(
        "/v1/templates/{template_id}/versions/{version}",
        response_model=TemplateAnswer,
        responses=responses(401, 404),
    )
    async def template_version(
        template_id: Id, version: Annotated[int, Path(ge=1)], request: Request, tenant: Caller
    ) -> TemplateAnswer:
        return _found(_store(request).get(tenant.name, template_id, version))

    return router


def _found(stored: StoredTemplate | None) -> TemplateAnswer:
    if stored is None:
        raise Problem(404, "No such template", "No template (or version) by that id.")
    return _answer(stored)
