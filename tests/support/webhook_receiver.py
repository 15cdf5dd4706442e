"""A webhook receiver on 127.0.0.1 for the webhook tests: a real aiohttp server that records
every POST (headers, body, time), answers with `status` (200 unless a test sets another), and
can go down (its port closed: connections refused) and come back on the same port."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from mailsluice.contracts.webhook_payload import decode_batch
from mailsluice.webhooks.signing import verify


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes
    at: float
    status: int  # what the receiver answered

    def batch(self) -> dict[str, Any]:
        return decode_batch(self.body)

    def verify(self, secret: str) -> None:
        verify(secret, self.headers, self.body, now=self.at)


class Receiver:
    def __init__(self, path: str = "/hook") -> None:
        self.path = path
        self.status = 200
        self.headers: dict[str, str] = {}  # extra answer headers (Retry-After)
        self.received: list[Received] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        status = self.status
        self.received.append(Received(dict(request.headers), body, time.time(), status))
        return web.Response(
            status=status, text="ok" if status < 300 else "not now", headers=self.headers
        )

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post(self.path, self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        if not self.port:
            server = site._server
            assert server is not None
            self.port = int(server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        """Close the port: connections are refused until start() again."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def delivered(self) -> list[Received]:
        return [r for r in self.received if 200 <= r.status < 300]

    def event_ids(self) -> list[str]:
        """Ids of every event in the batches answered 2xx, repeats included."""
        return [item["id"] for r in self.delivered() for item in r.batch()["data"]]
