"""The operator endpoints as a mode service, so the faust Worker starts and stops them."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from mode import Service

from mailsluice.observability.endpoints import ReadyCheck, start_http
from mailsluice.observability.progress import LiveCheck


class HttpService(Service):
    """/metrics, /healthz and /readyz of the stream processors (observability.start_http)."""

    def __init__(
        self, host: str, port: int, ready: ReadyCheck, live: LiveCheck, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.host = host
        self.port = port
        self.ready_check = ready
        self.live_check = live
        self._runner: web.AppRunner | None = None

    async def on_start(self) -> None:
        self._runner = await start_http(
            self.host, self.port, self.ready_check, live=self.live_check
        )

    async def on_stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
