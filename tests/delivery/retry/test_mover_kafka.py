"""The retry mover against the real broker: due order within a partition, retry-now, and a
kill -9 of the standalone `mailsluice retry-mover` that loses nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client import REGISTRY
from support.delivery_worker import envelope, new_pool, setup_pool
from support.eventually import eventually
from support.loopback import free_port
from support.processes import get, stop
from support.retry_mover import arrivals, produce_retries, running_mover

from mailsluice.admin.destinations import send_command
from mailsluice.contracts.control import Command
from mailsluice.kafka.settings import KafkaSettings

MAILSLUICE = Path(sys.executable).parent / "mailsluice"
# The least used tier in the test session, so other tests' retries rarely share a partition.
TIER = "1h"


def lateness_count() -> float:
    value = REGISTRY.get_sample_value(
        "mailsluice_retry_mover_lateness_seconds_count", {"tier": TIER}
    )
    return value or 0.0


async def test_records_out_of_due_order_leave_in_due_order(kafka: Any) -> None:
    ks = kafka.settings(queue_partitions=2)
    pool = new_pool()
    await setup_pool(ks, pool)
    async with running_mover(ks) as mover, arrivals(ks, pool) as seen:
        before = lateness_count()
        now = time.time()
        # One partition, offsets in this order; due in the order 1, 2, 0.
        envs = [
            envelope(pool, 0, ("a@late.example",), not_before=now + 7.0),
            envelope(pool, 1, ("b@soon.example",), not_before=now + 3.0),
            envelope(pool, 2, ("c@mid.example",), not_before=now + 5.0),
        ]
        await produce_retries(ks, TIER, envs)
        await seen.expect(
            lambda: len(seen.first) == 3, within=60, what="three records back on the queue"
        )
    order = sorted(seen.first, key=seen.first.__getitem__)
    assert order == [envs[1].queue_id, envs[2].queue_id, envs[0].queue_id]
    for env in envs:
        arrived = seen.first[env.queue_id]
        # never early, and not held behind a record due later (POLL_S plus produce and fetch)
        assert env.not_before <= arrived <= env.not_before + 1.0, (env.queue_id, arrived)
    assert seen.count == 3  # each moved once
    assert mover.moved >= 3
    assert lateness_count() >= before + 3


async def test_retry_now_releases_a_held_record_early(kafka: Any) -> None:
    ks = kafka.settings(queue_partitions=2)
    pool = new_pool()
    await setup_pool(ks, pool)
    async with running_mover(ks) as mover, arrivals(ks, pool) as seen:
        now = time.time()
        slow = envelope(pool, 0, ("a@slow.example",), not_before=now + 3600)
        other = envelope(pool, 1, ("b@other.example",), not_before=now + 12)
        await produce_retries(ks, TIER, [slow, other])
        await eventually(lambda: mover.waiting() >= 2, within=30, what="both fetched and held")
        await seen.watch(1.0)
        assert seen.first == {}
        asked = time.time()
        await send_command(ks, Command(pool, "slow.example", "retry-now", ts=asked, by="test"))
        await seen.expect(
            lambda: slow.queue_id in seen.first, within=10, what="the released record"
        )
        assert seen.first[slow.queue_id] - asked < 3.0
        assert other.queue_id not in seen.first  # another destination keeps its due time
        # counted once the move's produce is acknowledged, which may come after the reader
        # sees the copy
        await eventually(lambda: mover.released >= 1, within=10, what="the release counted")
        # the other one still comes on time, so nothing of this test stays uncommitted
        await seen.expect(
            lambda: other.queue_id in seen.first, within=30, what="the other record, on time"
        )
    assert seen.first[other.queue_id] >= other.not_before


def start_standalone(ks: KafkaSettings, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "MAILSLUICE_KAFKA_BOOTSTRAP": ks.bootstrap,
        "MAILSLUICE_KAFKA_QUEUE_PARTITIONS": str(ks.queue_partitions),
        "MAILSLUICE_RETRY_MOVER_HTTP_PORT": str(port),
        "MAILSLUICE_LOG_JSON_FORMAT": "false",
    }
    return subprocess.Popen([str(MAILSLUICE), "retry-mover"], env=env)


async def wait_ready(port: int, proc: subprocess.Popen[bytes], within: float = 60) -> str:
    """Wait for /readyz to say ready; returns the /metrics text then."""

    def ready() -> bool:
        assert proc.poll() is None, "retry mover exited"
        return get(f"http://127.0.0.1:{port}/readyz")[0] == 200

    await eventually(ready, within=within, what="the retry mover ready", blocking=True)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
            assert resp.status == 200
        async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
            assert resp.status == 200
            return await resp.text()


async def test_standalone_mover_killed_midway_loses_nothing(kafka: Any) -> None:
    ks = kafka.settings(queue_partitions=2)
    pool = new_pool()
    await setup_pool(ks, pool)
    port = free_port()
    first = start_standalone(ks, port)
    try:
        text = await wait_ready(port, first)
        assert "mailsluice_retry_mover_held_records" in text
        assert "mailsluice_retry_mover_backlog_records" in text
        now = time.time()
        # Due times spread over 6 s and shuffled against offset order.
        envs = [
            envelope(pool, n, (f"r{n}@d{n % 3}.example",), not_before=now + 1 + (n * 7 % 24) / 4)
            for n in range(24)
        ]
        await produce_retries(ks, TIER, envs[:12], partition=0)
        await produce_retries(ks, TIER, envs[12:], partition=1)
        async with arrivals(ks, pool) as seen:
            await seen.expect(
                lambda: len(seen.first) >= 6, within=60, what="six records back on the queue"
            )
            stop(first, signal.SIGKILL)  # no commit, no leaving the group
            assert len(seen.first) < len(envs)
            second = start_standalone(ks, port)
            try:
                await wait_ready(port, second)
                await seen.expect(
                    lambda: len(seen.first) == len(envs),
                    within=90,
                    what="every record back on the queue",
                )
            finally:
                stop(second)
                assert second.returncode == 0
    finally:
        stop(first, signal.SIGKILL)
    assert set(seen.first) == {e.queue_id for e in envs}  # nothing lost
    for env in envs:
        assert seen.first[env.queue_id] >= env.not_before  # never early
