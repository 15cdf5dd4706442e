"""The sandbox's HTTP side: Mailpit's API v1 (the parts that make sense here), the message
views, live events and the web UI.

    GET    /api/v1/info                       version, counts, size, runtime stats
    GET    /api/v1/messages?start&limit       newest first
    PUT    /api/v1/messages                   {"IDs": [...], "Read": bool} (no IDs: all)
    DELETE /api/v1/messages                   {"IDs": [...]} (no IDs: all)
    GET    /api/v1/search?query&start&limit   see search.py for the syntax
    DELETE /api/v1/search?query               delete what matches
    GET    /api/v1/message/<ID>[/headers|/raw]  ID may be "latest"; opening marks it read
    GET    /api/v1/message/<ID>/part/<PartID>  an attachment or inline file, as a download
    GET    /view/<ID>.html, /view/<ID>.txt    the HTML part (sandboxed by its CSP), the text part
    GET/PUT /api/v1/chaos                     scripted failures (chaos.py)
    GET    /api/v1/events                     server-sent events (events.py)
    GET    /                                  the web UI
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.resources
import resource
import time
from typing import Any
from urllib.parse import quote

from aiohttp import web

from mailsluice.sandbox import mime
from mailsluice.sandbox.chaos import Chaos, ChaosError, Triggers
from mailsluice.sandbox.events import Broadcaster
from mailsluice.sandbox.store import Captured, MessageStore, detail, summary

DEFAULT_PAGE = 50
MAX_PAGE = 1000
UI = importlib.resources.files("mailsluice.sandbox") / "ui"
UI_FILES = {"app.js": "text/javascript", "app.css": "text/css"}
# The UI itself: only its own files; frames only from the same origin (the message views).
UI_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
# A captured message's HTML: no scripts, no remote loads (no tracking pixel fires, nothing
# phones home), inline styles and data: images only (the view turns cid: images into data:
# URIs); `sandbox` makes it an opaque origin even when opened outside the UI's iframe.
VIEW_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; font-src data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'self'; sandbox allow-popups"
)


def _version() -> str:
    try:
        return importlib.metadata.version("mailsluice")
    except importlib.metadata.PackageNotFoundError:
        return "0"


def _int_param(request: web.Request, name: str, default: int, high: int) -> int:
    try:
        value = int(request.query.get(name, default))
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be an integer") from None
    return max(0, min(value, high))


async def _ids(request: web.Request) -> tuple[list[str] | None, dict[str, Any]]:
    """The body's "IDs" (None when absent or empty: all messages) and the whole body."""
    body: dict[str, Any] = {}
    if request.can_read_body:
        with contextlib.suppress(ValueError):
            parsed = await request.json()
            if isinstance(parsed, dict):
                body = parsed
    raw = body.get("IDs")
    ids = [str(i) for i in raw] if isinstance(raw, list) and raw else None
    return ids, body


class Api:
    def __init__(self, store: MessageStore, chaos: Chaos, events: Broadcaster) -> None:
        self.store = store
        self.chaos = chaos
        self.events = events

    def listing(self, request: web.Request, query: str | None) -> web.Response:
        start = _int_param(request, "start", 0, 10**9)
        limit = _int_param(request, "limit", DEFAULT_PAGE, MAX_PAGE)
        where = self.store.search(query) if query is not None else None
        matched, page = self.store.page(start, limit, where)
        return web.json_response(
            {
                "total": len(self.store),
                "unread": self.store.unread(),
                "count": len(page),
                "messages_count": matched,
                "start": start,
                "tags": [],
                "messages": [summary(m, self.store.is_read(m.id)) for m in page],
            }
        )

    async def messages(self, request: web.Request) -> web.Response:
        return self.listing(request, None)

    async def search(self, request: web.Request) -> web.Response:
        return self.listing(request, self._query(request))

    @staticmethod
    def _query(request: web.Request) -> str:
        query = request.query.get("query")
        if query is None:
            raise web.HTTPBadRequest(text="query is required")
        return query

    def deleted(self, ids: list[str] | None) -> web.Response:
        gone = self.store.delete(ids)
        self.events.publish("delete", {"IDs": [] if ids is None else gone})
        return web.Response(text="ok")

    async def delete(self, request: web.Request) -> web.Response:
        ids, _ = await _ids(request)
        return self.deleted(ids)

    async def delete_search(self, request: web.Request) -> web.Response:
        _, page = self.store.page(0, 10**9, self.store.search(self._query(request)))
        return self.deleted([m.id for m in page])

    async def set_read(self, request: web.Request) -> web.Response:
        ids, body = await _ids(request)
        read = bool(body.get("Read", False))
        self.store.mark_read(ids, read)
        self.events.publish("read", {"IDs": ids or [], "Read": read})
        return web.Response(text="ok")

    def found(self, request: web.Request) -> Captured:
        item = self.store.get(request.match_info["id"])
        if item is None:
            raise web.HTTPNotFound(text="message not found")
        return item

    async def message(self, request: web.Request) -> web.Response:
        item = self.found(request)
        if not self.store.is_read(item.id):
            self.store.mark_read([item.id])
            self.events.publish("read", {"IDs": [item.id], "Read": True})
        return web.json_response(detail(item))

    async def headers(self, request: web.Request) -> web.Response:
        return web.json_response(mime.headers(mime.parse(self.found(request).raw)))

    async def raw(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.found(request).raw,
            content_type="text/plain",
            charset="utf-8",
            headers={"X-Content-Type-Options": "nosniff"},
        )

    async def view(self, request: web.Request) -> web.Response:
        msg = mime.parse(self.found(request).raw)
        text, html = mime.bodies(msg)
        nosniff = {"X-Content-Type-Options": "nosniff"}
        if request.match_info["kind"] == "txt":
            return web.Response(text=text, content_type="text/plain", headers=nosniff)
        if not html:
            raise web.HTTPNotFound(text="no HTML part")
        headers = {**nosniff, "Content-Security-Policy": VIEW_CSP, "Referrer-Policy": "no-referrer"}
        html = mime.inline_images(html, msg)
        return web.Response(text=html, content_type="text/html", headers=headers)

    async def part(self, request: web.Request) -> web.Response:
        found = mime.part(mime.parse(self.found(request).raw), request.match_info["part"])
        if found is None:
            raise web.HTTPNotFound(text="no such part")
        content_type, filename, data = found
        # Always a download, never rendered on the sandbox's origin.
        headers = {
            "X-Content-Type-Options": "nosniff",
            "Content-Disposition": f"attachment; filename*=UTF-8''{quote(filename or 'part')}",
            "Content-Security-Policy": "default-src 'none'; sandbox",
        }
        return web.Response(body=data, content_type=content_type, headers=headers)

    async def info(self, _: web.Request) -> web.Response:
        stats = self.store.stats
        rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return web.json_response(
            {
                "Version": _version(),
                "LatestVersion": "",
                "Database": "memory",
                "DatabaseSize": self.store.size(),
                "Messages": len(self.store),
                "Unread": self.store.unread(),
                "Tags": {},
                "RuntimeStats": {
                    "Memory": rss_kib * 1024,
                    "MessagesDeleted": stats.deleted,
                    "SMTPAccepted": stats.accepted,
                    "SMTPAcceptedSize": stats.accepted_size,
                    "SMTPIgnored": 0,
                    "SMTPRejected": stats.rejected,
                    "Uptime": round(time.time() - stats.started, 3),
                },
            }
        )

    async def webui(self, _: web.Request) -> web.Response:
        return web.json_response(
            {"Label": "Mailsluice sandbox", "ChaosEnabled": True, "SpamAssassin": False}
        )

    async def get_chaos(self, _: web.Request) -> web.Response:
        return web.json_response(self.chaos.triggers.to_json())

    async def put_chaos(self, request: web.Request) -> web.Response:
        try:
            body = await request.json() if request.can_read_body else {}
        except ValueError:
            raise web.HTTPBadRequest(text="the body must be JSON") from None
        try:
            triggers = Triggers.parse(body)
        except ChaosError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        self.chaos.set(triggers)
        return web.json_response(triggers.to_json())

    async def healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "messages": len(self.store)})

    async def index(self, _: web.Request) -> web.Response:
        text = (UI / "index.html").read_text(encoding="utf-8")
        headers = {"Content-Security-Policy": UI_CSP, "X-Content-Type-Options": "nosniff"}
        return web.Response(text=text, content_type="text/html", headers=headers)

    async def asset(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in UI_FILES:
            raise web.HTTPNotFound()
        text = (UI / name).read_text(encoding="utf-8")
        return web.Response(
            text=text, content_type=UI_FILES[name], headers={"X-Content-Type-Options": "nosniff"}
        )


def build_api(store: MessageStore, chaos: Chaos, events: Broadcaster) -> web.Application:
    api = Api(store, chaos, events)
    app = web.Application()
    add = app.router
    add.add_get("/", api.index)
    add.add_get("/ui/{name}", api.asset)
    add.add_get("/api/v1/info", api.info)
    add.add_get("/api/v1/webui", api.webui)
    add.add_get("/api/v1/messages", api.messages)
    add.add_put("/api/v1/messages", api.set_read)
    add.add_delete("/api/v1/messages", api.delete)
    add.add_get("/api/v1/search", api.search)
    add.add_delete("/api/v1/search", api.delete_search)
    add.add_get("/api/v1/message/{id}", api.message)
    add.add_get("/api/v1/message/{id}/headers", api.headers)
    add.add_get("/api/v1/message/{id}/raw", api.raw)
    add.add_get("/api/v1/message/{id}/part/{part}", api.part)
    add.add_get("/view/{id}.{kind:html|txt}", api.view)
    add.add_get("/api/v1/chaos", api.get_chaos)
    add.add_put("/api/v1/chaos", api.put_chaos)
    add.add_get("/api/v1/events", events.stream)
    add.add_get("/healthz", api.healthz)
    return app
