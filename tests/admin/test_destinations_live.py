"""`mailsluice destinations` against the real broker with a worker's shaping runtime and a retry
mover running: a suspend or resume shows in the very next `list`, then as the worker reports
it; queued, held and retrying mail is counted per destination; unknown keys are refused."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from support.delivery_worker import envelope, new_pool, setup_pool
from support.eventually import eventually
from support.retry_mover import produce_retries, running_mover

from mailsluice.admin import destinations as cli
from mailsluice.contracts.control import Command
from mailsluice.delivery.retry.settings import RetryMoverSettings
from mailsluice.delivery.shaping.runtime import ShapingRuntime, ShapingSettings
from mailsluice.delivery.shaping.scheduler import Scheduler
from mailsluice.kafka.settings import KafkaSettings

# The least used tier in the test session (as the mover's own tests do).
TIER = "1h"


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mailsluice destinations")
    cli.add_arguments(parser)
    return parser.parse_args(list(argv))


async def ctl(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """The CLI as an operator runs it (its own event loop, in a thread: the runtime under test
    goes on in this one meanwhile)."""
    code = await asyncio.to_thread(cli.run, parse(*argv))
    out, err = capsys.readouterr()
    return code, out, err


async def rows(capsys: pytest.CaptureFixture[str], pool: str) -> dict[str, dict[str, Any]]:
    code, out, err = await ctl(capsys, "list", "--pool", pool, "--json")
    assert code == 0, err
    return {row["key"]: row for row in map(json.loads, out.splitlines())}


@contextlib.asynccontextmanager
async def runtime_of(ks: KafkaSettings, pool: str, *keys: str) -> AsyncIterator[ShapingRuntime]:
    """A worker's shaping runtime that knows `keys` (a lane each) and has published its status
    once; afterwards it publishes only on commands (the interval is an hour)."""
    runtime = ShapingRuntime(
        ShapingSettings(worker_id=f"w-{pool}", status_interval_s=3600), ks, pool
    )
    for key in keys:
        runtime.shaper.lanes.of(key, runtime.mono())
    await runtime.start()
    try:
        await runtime.publish()
        yield runtime
    finally:
        await runtime.stop()


async def test_suspend_and_resume_show_in_the_next_list(kafka, monkeypatch, capsys):
    ks = kafka.settings()
    monkeypatch.setenv("MAILSLUICE_KAFKA_BOOTSTRAP", ks.bootstrap)
    pool, key = new_pool(), "live.example"
    async with runtime_of(ks, pool, key):
        before = (await rows(capsys, pool))[key]
        assert (before["state"], before["confirmed"]) == ("slow_start", True)

        code, out, _err = await ctl(capsys, "suspend", key, "--pool", pool, "--for", "1h")
        assert code == 0 and out.startswith(f"suspend {pool}/{key} until")
        now = (await rows(capsys, pool))[key]  # no wait: the very next list
        assert now["state"] == "suspended"
        assert now["age_s"] < 30  # the command's age, or the worker's report of it

        # the worker reports it by itself, at once rather than at its next interval
        async def confirmed(state: str) -> dict[str, Any] | None:
            row = (await rows(capsys, pool))[key]
            ok = row["confirmed"] and row["reported_state"] == state
            return row if ok else None

        row = await eventually(lambda: confirmed("suspended"), within=20, what="the report")
        assert row["state"] == "suspended" and row["until"] > time.time() + 3000

        assert (await ctl(capsys, "resume", key, "--pool", pool))[0] == 0
        now = (await rows(capsys, pool))[key]
        assert now["state"] != "suspended" and now["until"] == 0.0
        row = await eventually(lambda: confirmed("slow_start"), within=20, what="resume report")
        assert row["state"] == "slow_start"

        code, out, _err = await ctl(capsys, "list", "--pool", pool)
        (line,) = [line for line in out.splitlines() if f" {key} " in line]
        fields = line.split()
        assert fields[3] == "slow_start"
        assert re.fullmatch(r"\d+s", fields[4]) and fields[5] == "ago"  # "3s ago"


async def test_queued_held_and_retrying_are_counted_per_destination(kafka, monkeypatch, capsys):
    ks = kafka.settings(queue_partitions=1)
    monkeypatch.setenv("MAILSLUICE_KAFKA_BOOTSTRAP", ks.bootstrap)
    pool = new_pool()
    await setup_pool(ks, pool)
    key, other = "counts.example", "other.example"
    later = time.time() + 3600
    envs = [
        envelope(pool, n, (f"r{n}@{key}",), not_before=later, held=held)
        for n, held in enumerate(("suspended", "suspended", "warmup", "", "", ""))
    ]
    envs.append(envelope(pool, 9, (f"r@{other}",), not_before=later))
    settings = RetryMoverSettings(status_interval_s=0.5)
    async with runtime_of(ks, pool) as runtime, running_mover(ks, settings=settings):
        # four messages of the destination waiting in the worker's memory
        scheduler: Scheduler[int] = Scheduler(runtime.shaper, horizon=3600.0)
        for n in range(4):
            assert scheduler.push(key, n, runtime.mono()) is None
        runtime.queued = scheduler.queued
        await runtime.publish()
        await produce_retries(ks, TIER, envs)

        async def counted() -> dict[str, dict[str, Any]] | None:
            found = await rows(capsys, pool)
            done = found.get(other, {}).get("retrying") == 1 and found[key]["held"] == 3
            return found if done else None

        found = await eventually(counted, within=30, what="the mover's counts")
        assert (found[key]["queued"], found[key]["held"], found[key]["retrying"]) == (4, 3, 3)
        # no worker has that one: its queue is unknown, not 0
        assert (found[other]["queued"], found[other]["held"], found[other]["state"]) == (
            None,
            0,
            "-",
        )

        # retry-now sends them all back to the queue: the counts follow
        for destination in (key, other):
            assert (await ctl(capsys, "retry-now", destination, "--pool", pool))[0] == 0

        async def released() -> bool:
            found = await rows(capsys, pool)
            return found[key]["held"] == 0 and found[key]["retrying"] == 0 and other not in found

        await eventually(released, within=30, what="the counts after retry-now")


async def test_unknown_key_refused_and_an_old_commands_key_can_be_resumed(
    kafka, monkeypatch, capsys
):
    ks = kafka.settings()
    monkeypatch.setenv("MAILSLUICE_KAFKA_BOOTSTRAP", ks.bootstrap)
    pool = new_pool()
    code, out, err = await ctl(capsys, "suspend", "gmail", "--pool", pool)
    assert code == 2 and out == ""
    assert "unknown destination 'gmail'; did you mean 'google'?" in err
    assert "google" not in (await rows(capsys, pool))  # nothing was written
    assert (await ctl(capsys, "resume", "gmial", "--pool", pool))[0] == 2
    # an earlier release accepted any key: a command for one can still be undone
    await cli.send_command(ks, Command(pool, "gmail", "suspend", until=time.time() + 600))
    assert "gmail" in await rows(capsys, pool)
    code, out, _err = await ctl(capsys, "resume", "gmail", "--pool", pool)
    assert code == 0 and out.strip() == f"resume {pool}/gmail"
    assert "gmail" not in await rows(capsys, pool)
    # a plain domain is a destination of its own
    assert (await ctl(capsys, "suspend", "example.com", "--pool", pool, "--for", "1m"))[0] == 0
    assert (await rows(capsys, pool))["example.com"]["state"] == "suspended"
