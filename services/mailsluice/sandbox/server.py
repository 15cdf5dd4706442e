"""`mailsluice sandbox`: an SMTP server that accepts everything and an HTTP API (Mailpit's
shape) that lists and shows what it captured. `Sandbox` runs the same in-process for tests."""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import time
from typing import Any

from aiohttp import web
from aiosmtpd.smtp import SMTP, Envelope, Session

from mailsluice import eventloop
from mailsluice.config import load
from mailsluice.observability.endpoints import stop_event
from mailsluice.sandbox.api import build_api
from mailsluice.sandbox.chaos import Chaos, Triggers
from mailsluice.sandbox.events import Broadcaster
from mailsluice.sandbox.settings import SandboxSettings
from mailsluice.sandbox.store import MessageStore, summary

S250_CAPTURED = "250 2.0.0 Ok: captured as {id}"


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
    """Accepts everything, unless a chaos rule answers at MAIL, RCPT or DATA."""

    def __init__(self, store: MessageStore, chaos: Chaos, events: Broadcaster) -> None:
        self.store = store
        self.chaos = chaos
        self.events = events

    def _refuse(self, server: SMTP, reply: str) -> str:
        self.store.stats.rejected += 1
        if reply.startswith("421") and server.transport is not None:
            # After the reply is written (push writes before it next yields): 421 closes.
            asyncio.get_running_loop().call_soon(server.transport.close)
        return reply

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        reply = self.chaos.verdict("mail", [address])
        if reply is not None:
            return self._refuse(server, reply)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        reply = self.chaos.verdict("rcpt", [address])
        if reply is not None:
            return self._refuse(server, reply)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        reply = self.chaos.verdict("data", list(envelope.rcpt_tos))
        if reply is not None:
            return self._refuse(server, reply)
        raw = envelope.original_content or b""
        item = self.store.add(
            str(envelope.mail_from or ""), list(envelope.rcpt_tos), raw, time.time()
        )
        self.events.publish("new", summary(item))
        return S250_CAPTURED.format(id=item.id)


def _json(text: str) -> Any:
    return json.loads(text) if text.strip() else None


class Sandbox:
    """The SMTP server and the HTTP API on the running event loop; `await start()`/`stop()`."""

    def __init__(self, settings: SandboxSettings | None = None) -> None:
        self.settings = settings or SandboxSettings.model_validate({})
        self.store = MessageStore(self.settings.max_messages)
        triggers = Triggers.parse(_json(self.settings.chaos_triggers))
        self.chaos = Chaos(triggers, self.settings.chaos_seed)
        self.events = Broadcaster()
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
        handler = _Handler(self.store, self.chaos, self.events)
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
        self._http = web.AppRunner(
            build_api(self.store, self.chaos, self.events), access_log=None, shutdown_timeout=2.0
        )
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
            self.events.close()  # open event streams would hold the HTTP shutdown
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
    print(f"sandbox web UI    {sandbox.http_url}/", flush=True)
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
