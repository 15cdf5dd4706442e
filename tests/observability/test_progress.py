"""Liveness: work held with no progress for longer than the stall bound fails /healthz, so
Kubernetes restarts the process; idle, or progressing, it stays alive. Simulated clock."""

from __future__ import annotations

import aiohttp
from support.loopback import free_port

from mailsluice.observability.endpoints import start_http
from mailsluice.observability.progress import Progress


class World:
    def __init__(self) -> None:
        self.now = 1000.0
        self.held = 0

    def progress(self, stall_s: float = 60.0) -> Progress:
        return Progress(stall_s, lambda: self.held, lambda: self.now)


def test_idle_is_alive_however_long() -> None:
    w = World()
    p = w.progress()
    w.now += 10_000
    assert p.check()[0]


def test_work_without_progress_past_the_bound_is_stalled() -> None:
    w = World()
    p = w.progress(stall_s=60)
    assert p.check()[0]  # idle at 1000
    w.held = 5
    w.now += 59
    assert p.check()[0]
    w.now += 2
    alive, detail = p.check()
    assert not alive and "5 held" in detail and "61 s" in detail


def test_progress_keeps_a_busy_process_alive_and_recovery_clears_a_stall() -> None:
    w = World()
    p = w.progress(stall_s=60)
    w.held = 3
    for _ in range(10):
        w.now += 50
        p.made()
        assert p.check()[0]
    w.now += 61
    assert not p.check()[0]
    p.made()  # it recovered by itself before the restart came
    assert p.check()[0]


def test_work_that_arrives_after_a_long_idle_is_judged_from_its_arrival() -> None:
    w = World()
    p = w.progress(stall_s=60)
    p.made()
    w.now += 3600
    assert p.check()[0]  # idle: nothing held
    w.held = 1
    w.now += 30
    assert p.check()[0]


async def test_healthz_answers_503_when_stalled() -> None:
    w = World()
    p = w.progress(stall_s=60)
    port = free_port()
    runner = await start_http("127.0.0.1", port, lambda: (True, ""), live=p.check)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                assert resp.status == 200
            p.check()
            w.held, w.now = 2, w.now + 120
            async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                assert resp.status == 503
                body = await resp.json()
                assert body["status"] == "stalled" and "no progress" in body["detail"]
    finally:
        await runner.cleanup()
