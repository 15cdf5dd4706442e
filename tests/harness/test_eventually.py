"""support.eventually: the one wait for a condition, async and sync."""

from __future__ import annotations

import asyncio
import threading

import pytest
from support.eventually import eventually, eventually_sync


async def test_returns_the_first_truthy_value() -> None:
    calls: list[int] = []

    def third_time() -> str | None:
        calls.append(1)
        return "done" if len(calls) == 3 else None

    assert await eventually(third_time, within=5, interval=0, what="three calls") == "done"
    assert len(calls) == 3


async def test_fails_naming_what_it_waited_for_with_the_last_value_and_detail() -> None:
    with pytest.raises(AssertionError) as info:
        await eventually(lambda: 0, within=0.1, what="the answer", detail=lambda: "so far: none")
    assert str(info.value) == "timed out after 0.1 s waiting for the answer (last: 0)\nso far: none"


async def test_async_condition_and_detail() -> None:
    seen: list[int] = []

    async def grows() -> bool:
        seen.append(len(seen))
        return len(seen) > 2

    assert await eventually(grows, within=5, interval=0, what="growth") is True

    async def never() -> list[int]:
        return []

    async def state() -> str:
        return "awaited detail"

    with pytest.raises(AssertionError, match="awaited detail"):
        await eventually(never, within=0.1, what="nothing", detail=state)


async def test_a_raising_condition_ends_the_wait_at_once() -> None:
    def exited() -> bool:
        raise RuntimeError("the process exited")

    with pytest.raises(RuntimeError, match="the process exited"):
        await eventually(exited, within=60, what="a dead process")


async def test_the_deadline_bounds_a_check_that_never_ends() -> None:
    never = asyncio.Event()
    with pytest.raises(AssertionError, match="the check never ended"):
        await eventually(never.wait, within=0.1, what="an event nobody sets")


async def test_a_timeout_inside_the_check_is_the_checks_own() -> None:
    async def times_out() -> bool:
        raise TimeoutError("the probe's own")

    with pytest.raises(TimeoutError, match="the probe's own"):
        await eventually(times_out, within=60, what="a probe")


async def test_blocking_checks_run_in_another_thread() -> None:
    threads: list[int] = []

    def blocking_probe() -> bool:
        threads.append(threading.get_ident())
        return True

    assert await eventually(blocking_probe, within=5, what="a probe", blocking=True)
    assert threads and threads[0] != threading.get_ident()


def test_the_sync_twin() -> None:
    calls: list[int] = []
    assert eventually_sync(
        lambda: calls.append(1) or len(calls) >= 2, within=5, interval=0, what="x"
    )
    with pytest.raises(AssertionError) as info:
        eventually_sync(lambda: [], within=0.1, what="a list", detail=lambda: "empty")
    assert str(info.value) == "timed out after 0.1 s waiting for a list (last: [])\nempty"
