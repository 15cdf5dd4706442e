"""The event loop of every long-running service: uvloop, whose transports, timers and polling
are C (libuv); under the bench load it cut ingest's and delivery's CPU per message. The test
suite runs on it too (tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on a uvloop loop."""
    return uvloop.run(main)
