"""The HTTP API's FastAPI app: POST /v1/messages (and the routers of the other /v1 resources),
problem details for every error, a bounded request body, request metrics.

The app gets its collaborators in an `ApiState` (app.state.api; the registry as
app.state.registry for api/auth.py), so tests and the OpenAPI writer build it without Kafka.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mailsluice.api.auth import current_tenant
from mailsluice.api.idempotency import IdempotencyBook, check_key, fingerprint
from mailsluice.api.models import SendAnswer, SendRequest
from mailsluice.api.problems import Problem, install, problem_media, responses
from mailsluice.api.send import Sender, Unavailable
from mailsluice.metrics.api import Api as metrics
from mailsluice.tenancy.model import Tenant
from mailsluice.tenancy.registry import Registry

log = logging.getLogger(__name__)

TITLE = "Mailsluice HTTP API"
RETRY_AFTER_S = 10


@dataclass
class ApiState:
    registry: Registry
    sender: Sender
    book: IdempotencyBook
    max_body_bytes: int


class BodyLimit:
    """413 for a body over `limit` bytes, by Content-Length or as it streams in. The body is
    read here, then handed on in one piece: FastAPI turns an error while it reads into a 400."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.limit:
            await too_large(self.limit).response()(scope, receive, send)
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client went away: the app hears it below
            body += message.get("body", b"")
            more = bool(message.get("more_body"))
            if len(body) > self.limit:
                await too_large(self.limit).response()(scope, receive, send)
                return
        whole: list[Message] = [{"type": "http.request", "body": bytes(body), "more_body": False}]

        async def replay() -> Message:
            return whole.pop() if whole else await receive()

        await self.app(scope, replay, send)


def too_large(limit: int) -> Problem:
    return Problem(413, "Body too large", f"A request body may hold at most {limit} bytes.")


def build_app(state: ApiState, routers: Sequence[APIRouter] = ()) -> FastAPI:
    app = FastAPI(title=TITLE, version="1", docs_url=None, redoc_url=None)
    app.state.api = state
    app.state.registry = state.registry
    install(app)
    generate = app.openapi
    app.openapi = lambda: problem_media(generate())  # type: ignore[method-assign]
    app.add_middleware(BodyLimit, limit=state.max_body_bytes)

    @app.middleware("http")  # added last, so outermost: a 413 is counted too
    async def count(request: Request, call_next: Any) -> Any:
        response = await call_next(request)
        route = metrics.route_label(request.url.path)
        metrics.REQUESTS.labels(route, metrics.code_label(response.status_code)).inc()
        return response

    app.include_router(messages_router())
    for router in routers:
        app.include_router(router)
    return app


def messages_router() -> APIRouter:
    router = APIRouter(tags=["messages"])

    @router.post(
        "/v1/messages",
        status_code=202,
        response_model=SendAnswer,
        responses=responses(400, 401, 403, 409, 413, 422, 429, 503),
        summary="Send one content to up to 1,000 recipients, each rendered with its own data",
    )
    async def send_messages(
        body: SendRequest,
        request: Request,
        tenant: Annotated[Tenant, Depends(current_tenant)],
        idempotency_key: Annotated[str | None, Header()] = None,
    ) -> Any:
        state: ApiState = request.app.state.api
        if idempotency_key is None:
            return await answer(state, tenant, body, uuid.uuid4().hex)
        key = check_key(idempotency_key)
        digest = fingerprint(body.model_dump(mode="json", by_alias=True))
        stored = state.book.begin(tenant.name, key, digest)
        if stored is not None:
            metrics.REPLAYS.inc()
            headers = {"Idempotent-Replayed": "true"}
            return JSONResponse(stored.body, stored.status, headers=headers)
        try:
            sent = await answer(state, tenant, body, key)
            await keep(state, tenant.name, key, digest, sent)
            return sent
        finally:
            state.book.end(tenant.name, key)

    return router


async def answer(state: ApiState, tenant: Tenant, body: SendRequest, key: str) -> SendAnswer:
    try:
        sent = await state.sender.send(tenant, body, key)
    except Unavailable as exc:
        log.warning("messages of tenant %s not acknowledged by Kafka: %s", tenant.name, exc)
        raise unavailable() from None
    for result in sent.results:
        metrics.RECIPIENTS.labels(result.status).inc()
    return sent


async def keep(state: ApiState, tenant: str, key: str, digest: str, sent: SendAnswer) -> None:
    try:
        await state.book.keep(tenant, key, digest, 202, sent.model_dump(mode="json"))
    except Exception as exc:
        # The records are in Kafka; a retry sends them again under the same message keys,
        # which delivery's dedup recognises.
        log.warning("idempotency answer of tenant %s not acknowledged: %s", tenant, exc)
        raise unavailable() from None


def unavailable() -> Problem:
    return Problem(
        503,
        "Try again later",
        "Kafka did not acknowledge the messages in time: send the request again, with the "
        "same Idempotency-Key (a copy that was written anyway is not delivered twice).",
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )
