"""A service's public web app (FastAPI) under uvicorn, in the service's own event loop beside
its Kafka clients; and the wait for the stop signal that every service's `run` ends with."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

import uvicorn
from aiohttp import web

from mailsluice.observability.endpoints import start_http, stop_event

# The operator endpoints (/metrics, /healthz, /readyz) beside a public app: host, port, readiness.
Ops = tuple[str, int, Callable[[], tuple[bool, str]]]


class WebServer:
    """uvicorn without its lifespan, access log or Server header (the services log and count
    requests themselves), and, given `ops`, the service's operator endpoints on their own
    address, started once the public app listens and stopped after it."""

    def __init__(
        self, app: Any, host: str, port: int, *, name: str, ops: Ops | None = None
    ) -> None:
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            server_header=False,
            lifespan="off",
        )
        self.server = uvicorn.Server(config)
        self.name = name
        self._port = port
        self._serving: asyncio.Task[None] | None = None
        self._ops = ops
        self._ops_runner: web.AppRunner | None = None

    @property
    def started(self) -> bool:
        return bool(self.server.started)

    @property
    def port(self) -> int:
        """The port (the configured one, or the one the system chose for 0)."""
        sockets = [s for server in self.server.servers for s in server.sockets]
        return int(sockets[0].getsockname()[1]) if sockets else self._port

    async def start(self) -> None:
        """Return once listening; raise why not when uvicorn could not start."""
        self._serving = asyncio.create_task(self.server.serve(), name=f"{self.name}-http")
        while not self.server.started:  # polled: uvicorn offers no event to wait on
            if self._serving.done():
                await self._serving  # raises why it could not start
                raise RuntimeError(f"the {self.name} server stopped while starting")
            await asyncio.sleep(0.01)
        if self._ops is not None:
            self._ops_runner = await start_http(*self._ops)

    async def stop(self) -> None:
        self.server.should_exit = True
        if self._serving is not None:
            await self._serving
        if self._ops_runner is not None:
            await self._ops_runner.cleanup()
            self._ops_runner = None


class Service(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


async def serve_until_stopped(service: Service) -> None:
    """Start the service, wait for SIGTERM or SIGINT, stop it."""
    stop = stop_event()
    await service.start()
    try:
        await stop.wait()
    finally:
        await service.stop()
