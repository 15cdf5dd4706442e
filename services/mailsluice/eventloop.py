"""The event loop of every long-running service: uvloop, whose transports, timers and polling
are C (libuv); under the bench load it cut ingest's and delivery's CPU per message. The test
suite runs on it too (tests/conftest.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on a uvloop loop."""
    return uvloop.run(main)


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Whether `event` is set within `seconds`. asyncio.wait_for on event.wait() loses a cancel
    that arrives as the event is set (Python < 3.12), and a loop around it then runs on after
    its task was cancelled; under asyncio.timeout the task itself awaits, so a cancel is kept."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
    return event.is_set()
