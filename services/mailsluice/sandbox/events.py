"""Live updates for the web UI: server-sent events (`GET /api/v1/events`).

Each event is `event: <type>` with JSON data: `new` (a message summary), `delete` (`{"IDs": [...]}`,
all of them when empty), `read` (`{"IDs": [...], "Read": bool}`). A subscriber that falls
behind by more than its queue holds is dropped; the browser's EventSource reconnects and the
UI reloads its list on `open`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from aiohttp import web

QUEUE = 256
KEEPALIVE_S = 15.0
_CLOSE = ("", None)


class Broadcaster:
    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[tuple[str, Any]]] = set()

    def publish(self, kind: str, data: Any) -> None:
        """Called on the event loop (SMTP handler, API handlers)."""
        for queue in list(self._queues):
            try:
                queue.put_nowait((kind, data))
            except asyncio.QueueFull:
                self._queues.discard(queue)
                queue.get_nowait()
                queue.put_nowait(_CLOSE)

    def close(self) -> None:
        """End every stream, so that the HTTP server's shutdown does not wait for them."""
        for queue in list(self._queues):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(_CLOSE)
        self._queues.clear()

    def __len__(self) -> int:
        return len(self._queues)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(QUEUE)
        self._queues.add(queue)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        try:
            await response.prepare(request)
            await response.write(b"retry: 1000\n: connected\n\n")
            while True:
                try:
                    kind, data = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    await response.write(b": keepalive\n\n")
                    continue
                if not kind:
                    break
                payload = json.dumps(data, separators=(",", ":"))
                await response.write(f"event: {kind}\ndata: {payload}\n\n".encode())
        except ConnectionResetError:
            pass  # the browser went away
        finally:
            self._queues.discard(queue)
        return response
