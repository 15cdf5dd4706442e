"""wait_event: the event-or-timeout wait of the services' loops (status, dispatch, reports)."""

from __future__ import annotations

import asyncio

import pytest

from mailsluice.eventloop import wait_event


async def test_set_event_and_timeout():
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    asyncio.get_running_loop().call_soon(event.set)
    assert await wait_event(event, 10) is True


async def test_a_cancel_that_comes_as_the_event_is_set_is_kept():
    """A loop waiting on an event that is set in the same turn as its task is cancelled must
    end: asyncio.wait_for on Python 3.11 returns the event's result instead and the loop runs on
    (a worker's status loop then kept its runtime from stopping)."""
    event = asyncio.Event()
    rounds = 0

    async def loop() -> None:
        nonlocal rounds
        while True:
            await wait_event(event, 3600)
            event.clear()
            rounds += 1

    task = asyncio.create_task(loop())
    for _ in range(3):  # let it reach its wait
        await asyncio.sleep(0)
    event.set()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert rounds == 0
