"""Retrying until Kafka answers.

Services start, and keep following topics, while Kafka may be away: a pod must stay up (and
not ready) rather than crash-loop while the brokers restart. Every such loop is this one
helper; what differs between callers is only what one attempt does, which failures mean
"Kafka is not answering yet", and what to do after each failure (log, close half-started
clients, or give up by raising). The wait is injectable so the timing is proven on a
simulated clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable

from aiokafka.errors import KafkaError

# What a client raises while the brokers cannot be reached or answer in time (TimeoutError
# and refused connections are OSErrors).
KAFKA_DOWN: tuple[type[Exception], ...] = (KafkaError, OSError)

Sleep = Callable[[float], Awaitable[None]]
OnFailure = Callable[[Exception], Awaitable[None] | None]


async def until_kafka_answers(
    attempt: Callable[[], Awaitable[object]],
    *,
    retry_s: float,
    max_retry_s: float | None = None,
    stop: asyncio.Event | None = None,
    on_failure: OnFailure | None = None,
    errors: tuple[type[Exception], ...] = KAFKA_DOWN,
    sleep: Sleep = asyncio.sleep,
) -> bool:
    """Await `attempt()` until it returns: True then, False if `stop` is set first.

    A failure of a type in `errors` goes to `on_failure` (sync or async; it may raise to give
    up), then the next attempt comes `retry_s` later, or at once when `stop` is set meanwhile
    (no further attempt then). With `max_retry_s` the wait doubles after every failure up to
    that bound. Other exceptions and cancellation propagate at once.
    """
    wait = retry_s
    while stop is None or not stop.is_set():
        try:
            await attempt()
            return True
        except errors as exc:
            if on_failure is not None:
                outcome = on_failure(exc)
                if inspect.isawaitable(outcome):
                    await outcome
        await _pause(sleep, wait, stop)
        if max_retry_s is not None:
            wait = min(max_retry_s, wait * 2)
    return False


async def _pause(sleep: Sleep, seconds: float, stop: asyncio.Event | None) -> None:
    """`sleep(seconds)`, cut short when `stop` is set."""
    if stop is None:
        await sleep(seconds)
        return
    napping = asyncio.ensure_future(sleep(seconds))
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({napping, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (napping, stopping):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
