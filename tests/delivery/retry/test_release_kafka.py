"""`destinations suspend`, then `resume` and `retry-now`, through the real pipeline: a delivery
service (worker and retry mover) with its shaping runtime on the real broker.

A message queued during a suspension goes to a delay topic due when the suspension would end;
`resume` brings it back at once (due on arrival, its hold's text gone) and leaves a failure
retry of the same destination on its schedule; `retry-now` brings that one back too, with the
remote's reply kept as its last error.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

from support.delivery_worker import (
    FakeTransport,
    Running,
    enqueue,
    envelope,
    new_pool,
    service_for,
    setup_pool,
)
from support.eventually import eventually
from support.topic_reader import TopicReader, reading

from mailsluice.admin.destinations import send_command
from mailsluice.contracts.control import Command
from mailsluice.contracts.envelope import Envelope, envelope_from_headers
from mailsluice.contracts.topics import queue_topic, retry_topic
from mailsluice.delivery.shaping.runtime import ShapingRuntime, ShapingSettings
from mailsluice.kafka.settings import KafkaSettings

KEY = "held.example"
FULL = "452", "4.2.2", "Mailbox full"
SUSPEND_S = 7200.0  # under the message expiry, so the deferral is a plain hold
PROMPT_S = 5.0  # a released message is sent within this of the command


def envelope_of(record: Any) -> Envelope | None:
    try:
        return envelope_from_headers(record.headers)
    except ValueError:
        return None  # another test's undecodable record


def copies(reader: TopicReader, queue_id: str) -> list[Envelope]:
    """The envelopes of `queue_id`'s records found so far, in offset order."""
    envs = (envelope_of(r) for r in reader.found)
    return [e for e in envs if e is not None and e.queue_id == queue_id]


@contextlib.asynccontextmanager
async def shaping_runtime(ks: KafkaSettings, pool: str) -> AsyncIterator[ShapingRuntime]:
    """The pool's shaping runtime following the control topic, as `mailsluice delivery` runs
    it; status is published only when asked (never here)."""
    settings = ShapingSettings(worker_id=f"w-{pool}", status_interval_s=3600)
    runtime = ShapingRuntime(settings, ks, pool)
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.stop()


async def test_resume_and_retry_now_release_what_a_suspension_held(kafka: Any) -> None:
    ks = kafka.settings(queue_partitions=1)
    pool = new_pool()
    await setup_pool(ks, pool)
    sent: dict[str, list[float]] = defaultdict(list)  # queue id -> wall times of its sends

    async def remote(env: Envelope, rcpt: str) -> tuple[int, str, str]:
        sent[env.queue_id].append(time.time())
        if rcpt.startswith("full@") and len(sent[env.queue_id]) == 1:
            return int(FULL[0]), FULL[1], FULL[2]
        return 250, "2.0.0", "ok"

    def of_pool(record: Any) -> bool:
        env = envelope_of(record)
        return env is not None and env.pool == pool

    retried = envelope(pool, 0, (f"full@{KEY}",))
    queued = envelope(pool, 1, (f"a@{KEY}",))
    async with (
        shaping_runtime(ks, pool) as runtime,
        Running(service_for(ks, pool, FakeTransport(remote), runtime.shaper)) as service,
        reading(ks, retry_topic("1m"), of_pool) as failures,
        reading(ks, retry_topic("1h"), of_pool) as holds,
        reading(ks, queue_topic(pool)) as queue,
    ):
        mover = service.mover
        assert mover is not None
        # A failure retry, written before any command: tried once, due in about 5 minutes.
        await enqueue(ks, [retried])
        await failures.at_least(1, within=30, what="failure retry on the 1m tier")
        (failed,) = copies(failures, retried.queue_id)
        assert (failed.held, failed.last_error, failed.attempt) == ("", " ".join(FULL), 1)
        assert failed.not_before > time.time() + 200

        await send_command(
            ks, Command(pool, KEY, "suspend", until=time.time() + SUSPEND_S, by="test")
        )
        await eventually(
            lambda: runtime.shaper.wait_time(KEY, runtime.mono()) > SUSPEND_S / 2,
            within=20,
            what=f"{KEY} suspended in the worker",
        )
        await enqueue(ks, [queued])
        await holds.at_least(1, within=30, what="the suspended message on the 1h tier")
        (deferred,) = copies(holds, queued.queue_id)
        # held by shaping, untried, due when the suspension would end; the shaper names the
        # hold ("suspended") once it says so, until then every deferral is a throttle
        assert deferred.held in ("suspended", "throttled")
        assert deferred.last_error and deferred.last_error != failed.last_error
        assert deferred.attempt == 0
        assert deferred.not_before > time.time() + SUSPEND_S / 2
        assert sent[queued.queue_id] == []

        resumed = time.time()
        await send_command(ks, Command(pool, KEY, "resume", ts=resumed, by="test"))
        await eventually(
            lambda: sent[queued.queue_id], within=20, what="the held message sent after resume"
        )
        assert sent[queued.queue_id][0] - resumed < PROMPT_S
        await eventually(lambda: mover.released >= 1, within=10, what="the release counted")
        # moved in the same round as the held message had resume taken it: it did not
        assert mover.released == 1
        assert len(sent[retried.queue_id]) == 1
        await queue.at_least(3, within=10, what="queue records (two sent, one released)")
        released = copies(queue, queued.queue_id)[-1]
        assert (released.held, released.last_error, released.attempt) == ("", "", 0)
        assert resumed <= released.not_before <= sent[queued.queue_id][0]

        asked = time.time()
        await send_command(ks, Command(pool, KEY, "retry-now", ts=asked, by="test"))
        await eventually(
            lambda: len(sent[retried.queue_id]) == 2,
            within=20,
            what="the failure retry sent after retry-now",
        )
        assert sent[retried.queue_id][1] - asked < PROMPT_S < failed.not_before - asked
        await queue.at_least(4, within=10, what="queue records (the retry released)")
        again = copies(queue, retried.queue_id)[-1]
        assert (again.held, again.last_error, again.attempt) == ("", " ".join(FULL), 1)
        assert asked <= again.not_before <= sent[retried.queue_id][1]
        assert len(sent[queued.queue_id]) == 1  # delivered once, never released twice
