"""Waiting for a condition: the one way a test waits for what another task, thread or process
does.

    await eventually(lambda: mx.open_connections == 0, within=5, what="the connection closed")
    dep = eventually_sync(lambda: get_deployment(...), within=60, what="the Deployment")

`condition` is called until it returns something truthy, which is returned. It may be a plain
function or return an awaitable (an async probe such as reading committed offsets; the deadline
bounds it too), and it may raise to end the wait at once (say, when the process it waits for
has exited). After `within` seconds the test fails with an AssertionError that names `what`,
the last value seen and, if given, `detail()` (a log tail, the state so far). The interval
between checks is only how often to look: nothing depends on its length, so it is never a
synchronisation by itself.

A blocking check (an HTTP probe, kubectl) runs in a thread with `blocking=True`, so the event
loop goes on meanwhile. `eventually_sync` is the same for sync tests and code on other threads
(kubectl probes, smtplib clients, the fake MX's own thread).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

T = TypeVar("T")


async def eventually(
    condition: Callable[[], T | Awaitable[T]],
    *,
    within: float,
    what: str,
    interval: float = 0.05,
    detail: Callable[[], object] | None = None,
    blocking: bool = False,
) -> T:
    """Return condition()'s first truthy value; fail the test after `within` seconds.
    `blocking=True` runs each check in a thread (an HTTP probe, kubectl, a PromQL query)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        value = asyncio.to_thread(condition) if blocking else condition()
        if inspect.isawaitable(value):
            scope = asyncio.timeout_at(deadline)
            try:
                async with scope:
                    value = await value
            except TimeoutError:
                if not scope.expired():
                    raise
                raise AssertionError(
                    f"timed out after {within:g} s waiting for {what} (the check never ended)"
                ) from None
        if value:
            return cast(T, value)
        if loop.time() >= deadline:
            extra = detail() if detail is not None else None
            if inspect.isawaitable(extra):
                extra = await extra
            text = None if detail is None else str(extra)
            raise AssertionError(_message(what, within, value, text))
        await asyncio.sleep(interval)


def eventually_sync(
    condition: Callable[[], T],
    *,
    within: float,
    what: str,
    interval: float = 0.05,
    detail: Callable[[], object] | None = None,
) -> T:
    """eventually() for sync callers: blocks this thread between checks."""
    deadline = time.monotonic() + within
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = None if detail is None else str(detail())
            raise AssertionError(_message(what, within, value, text))
        time.sleep(interval)


def _message(what: str, within: float, last: Any, detail: str | None) -> str:
    text = f"timed out after {within:g} s waiting for {what} (last: {last!r})"
    return text if detail is None else f"{text}\n{detail}"
