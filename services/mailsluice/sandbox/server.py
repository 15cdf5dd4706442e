"""`mailsluice sandbox`: an SMTP server that accepts everything and an HTTP API (Mailpit's
shape) that lists and shows what it captured. `Sandbox` runs the same in-process for tests."""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import time
from typing import Any

from aiohttp import web
from aiosmtpd.smtp import SMTP, Envelope, Session

from mailsluice import eventloop
from mailsluice.config import load
from mailsluice.observability.endpoints import stop_event
from mailsluice.sandbox.settings import SandboxSettings
from mailsluice.sandbox.store import MessageStore, detail, summary

S250_CAPTURED = "250 2.0.0 Ok: captured as {id}"
DEFAULT_PAGE = 50
MAX_PAGE = 1000


class _SandboxSMTP(SMTP):
    def __init__(self, handler: Any, live: set[_SandboxSMTP], **kwargs: Any) -> None:
        # Per instance: aiosmtpd keeps this dict on the class and grows it on every EHLO.
        self.command_size_limits = collections.defaultdict(lambda: SMTP.command_size_limit)
        super().__init__(handler, **kwargs)
        self._live = live

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._live.add(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self._live.discard(self)
        super().connection_lost(error)


class _Handler:
    def __init__(self, store: MessageStore) -> None:
        self.store = store

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        item = self.store.add(
            str(envelope.mail_from or ""), list(envelope.rcpt_tos), raw, time.time()
        )
        return S250_CAPTURED.format(id=item.id)


def _int_param(request: web.Request, name: str, default: int, high: int) -> int:
    try:
        value = int(request.query.get(name, default))
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be an integer") from None
    return max(0, min(value, high))


def build_api(store: MessageStore) -> web.Application:
    async def messages(request: web.Request) -> web.Response:
        start = _int_param(request, "start", 0, 10**9)
        limit = _int_param(request, "limit", DEFAULT_PAGE, MAX_PAGE)
        total, page = store.page(start, limit)
        return web.json_response(
            {
                "total": total,
                "unread": total,
                "count": len(page),
                "messages_count": total,
                "start": start,
                "tags": [],
                "messages": [summary(m) for m in page],
            }
        )

    def found(request: web.Request) -> Any:
        item = store.get(request.match_info["id"])
        if item is None:
            raise web.HTTPNotFound(text="message not found")
        return item

    async def message(request: web.Request) -> web.Response:
        return web.json_response(detail(found(request)))

    async def raw(request: web.Request) -> web.Response:
        return web.Response(body=found(request).raw, content_type="text/plain", charset="utf-8")

    async def delete(request: web.Request) -> web.Response:
        ids: list[str] | None = None
        if request.can_read_body:
            with contextlib.suppress(ValueError):
                body = await request.json()
                if isinstance(body, dict) and isinstance(body.get("IDs"), list) and body["IDs"]:
                    ids = [str(i) for i in body["IDs"]]
        store.delete(ids)
        return web.Response(text="ok")

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "messages": len(store)})

    app = web.Application()
    app.router.add_get("/api/v1/messages", messages)
    app.router.add_delete("/api/v1/messages", delete)
    app.router.add_get("/api/v1/message/{id}", message)
    app.router.add_get("/api/v1/message/{id}/raw", raw)
    app.router.add_get("/healthz", healthz)
    return app


class Sandbox:
    """The SMTP server and the HTTP API on the running event loop; `await start()`/`stop()`."""

    def __init__(self, settings: SandboxSettings | None = None) -> None:
        self.settings = settings or SandboxSettings.model_validate({})
        self.store = MessageStore(self.settings.max_messages)
        self._smtp: asyncio.Server | None = None
        self._http: web.AppRunner | None = None
        self._live: set[_SandboxSMTP] = set()
        self.smtp_port = self.settings.smtp_port
        self.http_port = self.settings.http_port

    @property
    def smtp_address(self) -> str:
        return f"{self.settings.smtp_host}:{self.smtp_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.settings.http_host}:{self.http_port}"

    async def start(self) -> Sandbox:
        s = self.settings
        handler = _Handler(self.store)
        loop = asyncio.get_running_loop()

        def factory() -> _SandboxSMTP:
            return _SandboxSMTP(
                handler,
                self._live,
                hostname=s.hostname,
                ident="Mailsluice sandbox",
                data_size_limit=s.max_message_size,
                enable_SMTPUTF8=True,
                timeout=300,
                loop=loop,
            )

        self._smtp = await loop.create_server(factory, s.smtp_host, s.smtp_port)
        self.smtp_port = self._smtp.sockets[0].getsockname()[1]
        self._http = web.AppRunner(build_api(self.store), access_log=None)
        await self._http.setup()
        site = web.TCPSite(self._http, s.http_host, s.http_port)
        await site.start()
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            self.http_port = server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._smtp is not None:
            self._smtp.close()
            for proto in list(self._live):
                if proto.transport is not None:
                    proto.transport.close()
            await self._smtp.wait_closed()
            self._smtp = None
        if self._http is not None:
            await self._http.cleanup()
            self._http = None

    async def __aenter__(self) -> Sandbox:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--smtp-port", type=int, help="SMTP port (default: settings, 1025)")
    parser.add_argument("--http-port", type=int, help="HTTP API port (default: settings, 8025)")


async def serve(settings: SandboxSettings) -> None:
    sandbox = await Sandbox(settings).start()
    stop = stop_event()
    print(f"sandbox SMTP      smtp://{sandbox.smtp_address}", flush=True)
    print(f"sandbox messages  {sandbox.http_url}/api/v1/messages", flush=True)
    print(f"sandbox raw       {sandbox.http_url}/api/v1/message/<ID>/raw", flush=True)
    try:
        await stop.wait()
    finally:
        await sandbox.stop()
        print("sandbox stopped", flush=True)


def run(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    if args.smtp_port is not None:
        overrides["smtp_port"] = args.smtp_port
    if args.http_port is not None:
        overrides["http_port"] = args.http_port
    settings = load(SandboxSettings)
    if overrides:
        settings = settings.model_copy(update=overrides)
    eventloop.run(serve(settings))
    return 0
