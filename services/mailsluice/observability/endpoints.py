"""What every service exposes to operators: /metrics, /healthz, /readyz, and JSON logs; and the
stop signal a service waits for."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from mailsluice.config import LogSettings
from mailsluice.observability.progress import LiveCheck

ReadyCheck = Callable[[], tuple[bool, str]]

# Message templates a Repeats filter remembers before it starts over.
REPEATS_KEPT = 1000
# Fields a log call may pass in `extra=` that end up as JSON keys.
LOG_CONTEXT_FIELDS = ("queue_id", "pool", "destination", "remote", "component")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in LOG_CONTEXT_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class Repeats(logging.Filter):
    """Lets a message of the loggers under `prefix` through at most once per `interval_s` (per
    logger and message template), saying how many like it were held back: a Kafka client
    retrying into an outage otherwise writes the same line a thousand times a second. Other
    loggers' lines (one per message, with its queue id) all pass."""

    def __init__(
        self,
        prefix: str,
        interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.prefix, self.interval_s, self.clock = prefix, interval_s, clock
        self._seen: dict[tuple[str, object], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.prefix):
            return True
        key, now = (record.name, record.msg), self.clock()
        last, held = self._seen.get(key, (-math.inf, 0))
        if now - last < self.interval_s:
            self._seen[key] = (last, held + 1)
            return False
        if len(self._seen) > REPEATS_KEPT:
            self._seen.clear()
        self._seen[key] = (now, 0)
        if held:
            record.msg = f"{record.msg} ({held} more like it in the last {now - last:.0f} s)"
        return True


def stop_event() -> asyncio.Event:
    """An event set on SIGTERM or SIGINT, the handlers installed now: a signal that comes while
    the service is still starting stops it once started, gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def setup_logging(settings: LogSettings, component: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.json_format:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s {component} %(levelname)s %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level)
    # Kafka client chatter at INFO drowns the service's own lines, and so does its retrying.
    kafka_log = logging.getLogger("aiokafka")
    kafka_log.setLevel(max(logging.WARNING, root.level))
    handler.addFilter(Repeats("aiokafka"))


def build_app(
    ready: ReadyCheck, registry: CollectorRegistry = REGISTRY, live: LiveCheck | None = None
) -> web.Application:
    """`live`: the liveness check (observability/progress.py); without one /healthz says the
    process answers, which is all it can tell."""
    started = time.time()

    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        ok, detail = live() if live is not None else (True, "")
        body = {"status": "ok" if ok else "stalled", "uptime_s": round(time.time() - started, 1)}
        if detail:
            body["detail"] = detail
        return web.json_response(body, status=200 if ok else 503)

    async def readyz(_: web.Request) -> web.Response:
        ok, detail = ready()
        return web.json_response(
            {"status": "ready" if ok else "not ready", "detail": detail}, status=200 if ok else 503
        )

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def start_http(
    host: str,
    port: int,
    ready: ReadyCheck,
    registry: CollectorRegistry = REGISTRY,
    live: LiveCheck | None = None,
) -> web.AppRunner:
    """Serve the operator endpoints; the caller awaits runner.cleanup() at shutdown."""
    runner = web.AppRunner(build_app(ready, registry, live), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
