"""An asyncio event loop on a daemon thread: servers the tests run beside synchronous code
(support.fake_mx, support.provider_sim) start on it and are shut down on it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
START_S = 10.0  # servers listen within this
STOP_S = 15.0  # a shutdown (connections closed, tasks cancelled) ends within this


class LoopThread:
    def __init__(self, name: str) -> None:
        self.name = name
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self.loop is not None

    def start(self, serve: Callable[[asyncio.AbstractEventLoop], Coroutine[Any, Any, T]]) -> T:
        """Start the loop and run `serve(loop)` on it; on failure the loop is stopped again."""
        loop = self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, daemon=True, name=self.name)
        self._thread.start()
        try:
            return asyncio.run_coroutine_threadsafe(serve(loop), loop).result(START_S)
        except BaseException:
            self.stop(None)
            raise

    def stop(self, shutdown: Callable[[], Awaitable[None]] | None) -> None:
        """Run `shutdown()` on the loop, cancel every task left, then end the thread."""
        loop, thread = self.loop, self._thread
        if loop is None or thread is None:
            return

        async def finish() -> None:
            if shutdown is not None:
                await shutdown()
            current = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not current]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(finish(), loop).result(STOP_S)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()
            self.loop = self._thread = None
