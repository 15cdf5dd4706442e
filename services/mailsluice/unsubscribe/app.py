"""The public pages of the unsubscribe service (FastAPI).

- `POST /u/{token}` is the RFC 8058 one-click: body `List-Unsubscribe=One-Click` (form or
  multipart), no cookie, no login. A genuine token becomes an `unsubscribe` event, and 200
  follows once Kafka has acknowledged it; 503 when Kafka does not in time (the mail provider
  tries again).
- `GET /u/{token}` shows a plain page with a form that POSTs the same. It never unsubscribes:
  link scanners and previews fetch every GET.
- A token that does not verify: 400 when it is no token at all, 404 when it is one but not
  ours (forged, altered, or signed with a retired key), as RFC 9457 problem details.
"""

from __future__ import annotations

import html
import logging
import time
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from mailsluice.consent.tokens import Claim, KeyRing, TokenError, unsubscribe_event
from mailsluice.contracts.events import Event
from mailsluice.metrics.unsubscribe import Unsubscribe as metrics

log = logging.getLogger(__name__)

Acknowledge = Callable[[Event], Awaitable[None]]  # raises when Kafka did not take the event

ONE_CLICK = "List-Unsubscribe=One-Click"
MAX_BODY = 64 * 1024
# Nothing of these pages is cached, indexed, framed or leaked as a referrer.
_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex",
    "Content-Security-Policy": "default-src 'none'; form-action 'self'; frame-ancestors 'none'",
}
_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body><main><h1>{title}</h1><p>{text}</p>{form}</main></body></html>
"""
_FORM = (
    '<form method="post" action="/u/{token}">'
    '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
    '<button type="submit">Unsubscribe</button></form>'
)


def problem(status: int, title: str, detail: str) -> JSONResponse:
    """An RFC 9457 problem details response."""
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    return JSONResponse(body, status, headers=_HEADERS, media_type="application/problem+json")


def bad_token(exc: TokenError) -> JSONResponse:
    if exc.reason == "malformed":
        return problem(400, "Bad unsubscribe link", "The link is damaged or incomplete.")
    return problem(404, "Unknown unsubscribe link", "This link is not one of ours.")


def page(title: str, text: str, form: str = "", status: int = 200) -> HTMLResponse:
    return HTMLResponse(_PAGE.format(title=title, text=text, form=form), status, headers=_HEADERS)


def is_one_click(body: bytes, content_type: str) -> bool:
    """Whether a POST body says List-Unsubscribe=One-Click (form-encoded or multipart)."""
    if content_type.startswith("multipart/form-data"):
        text = body.decode("utf-8", "replace")
        return 'name="List-Unsubscribe"' in text and "One-Click" in text
    fields = parse_qs(body.decode("utf-8", "replace").strip())
    return "One-Click" in fields.get("List-Unsubscribe", [])


def build_app(keys: KeyRing, acknowledge: Acknowledge) -> FastAPI:
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    def verify(token: str, channel: str) -> Claim | JSONResponse:
        try:
            return keys.verify(token)
        except TokenError as exc:
            metrics.REQUESTS.labels(channel, exc.reason).inc()
            return bad_token(exc)

    @app.get("/u/{token}")
    async def confirm(token: str) -> Response:
        claim = verify(token, "page")
        if isinstance(claim, JSONResponse):
            return claim
        metrics.REQUESTS.labels("page", "ok").inc()
        who = html.escape(claim.recipient)
        text = f"Stop sending this mail to <strong>{who}</strong>?"
        return page("Unsubscribe", text, _FORM.format(token=html.escape(token)))

    @app.post("/u/{token}")
    async def one_click(token: str, request: Request) -> Response:
        started = time.monotonic()
        claim = verify(token, "one-click")
        if isinstance(claim, JSONResponse):
            return claim
        body = await request.body()
        if len(body) > MAX_BODY or not is_one_click(body, request.headers.get("content-type", "")):
            metrics.REQUESTS.labels("one-click", "not_one_click").inc()
            return problem(400, "Not a one-click request", f"The body must be {ONE_CLICK}.")
        try:
            await acknowledge(unsubscribe_event(claim, "one-click", time.time()))
        except Exception as exc:
            metrics.REQUESTS.labels("one-click", "unavailable").inc()
            log.warning("unsubscribe event not acknowledged: %s", exc)
            answer = problem(503, "Try again later", "The request could not be recorded.")
            answer.headers["Retry-After"] = "60"
            return answer
        metrics.REQUESTS.labels("one-click", "ok").inc()
        metrics.SECONDS.observe(time.monotonic() - started)
        log.info("unsubscribed (one-click) in %s", claim.scope)
        return page("Unsubscribed", "You will get no more of this mail.")

    return app
