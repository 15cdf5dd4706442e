"""`mailsluice streams` against the real broker: run as a subprocess (faust's own warnings
stay out of this process), fed events, judged by the records it writes to the suppressions
topic, and stopped with SIGTERM by pid."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from support.events import publish_events
from support.eventually import eventually, eventually_sync
from support.loopback import free_port
from support.paths import REPO
from support.streams_process import StreamsProcess, get, prepare, running
from support.topic_reader import read_topic, reading

from mailsluice.contracts.events import Event, EventType
from mailsluice.contracts.suppressions import decode_suppression
from mailsluice.contracts.topics import SUPPRESSIONS_TOPIC
from mailsluice.kafka.settings import KafkaSettings

EXE = REPO / ".venv" / "bin" / "mailsluice"
DAY = 86400.0


@pytest.fixture(scope="module")
def streams(
    kafka, kafka_settings: KafkaSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StreamsProcess]:
    app_id = f"test-streams-{uuid.uuid4().hex[:8]}"
    prepare(kafka_settings, app_id)
    workdir = tmp_path_factory.mktemp("streams")
    with running(
        kafka.bootstrap, app_id, workdir, MAILSLUICE_STREAMS_SWEEP_INTERVAL_S="1"
    ) as process:
        yield process


_publish = publish_events


async def _records(
    kafka_settings: KafkaSettings, expected: dict[str, list[str]], streams: StreamsProcess
) -> dict[str, list[str]]:
    """Reasons written per address of `expected` (addresses of this test alone), once there
    are as many records as expected."""

    def wanted(record: Any) -> bool:
        return (record.key or b"").decode() in expected and record.value is not None

    async with reading(kafka_settings, SUPPRESSIONS_TOPIC, wanted) as reader:
        try:
            records = await reader.at_least(
                sum(len(r) for r in expected.values()), within=90, what="suppressions"
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{streams.tail()}") from None
    found: dict[str, list[str]] = {a: [] for a in expected}
    for record in records:
        entry = decode_suppression(record.value)
        assert entry.source == "streams"
        found[record.key.decode()].append(entry.reason)
    return found


def _addr(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:10]}@example.test"


def _ev(kind: EventType, rcpt: str, queue_id: str, *, days_ago: float = 0, **kw: object) -> Event:
    fields: dict[str, object] = {"pool": "default", "recipient": rcpt, "queue_id": queue_id}
    return Event(type=kind, ts=time.time() - days_ago * DAY, **{**fields, **kw})  # type: ignore[arg-type]


def _expired(rcpt: str, queue_id: str, days_ago: float) -> Event:
    return _ev(
        EventType.EXPIRATION,
        rcpt,
        queue_id,
        days_ago=days_ago,
        code=421,
        enhanced="4.4.2",
        text="connection timed out",
        reason="expired",
    )


async def test_hard_bounce_and_complaint_suppress_a_policy_block_does_not(
    streams: StreamsProcess, kafka_settings: KafkaSettings
) -> None:
    hard, complained, blocked = _addr("hard"), _addr("complaint"), _addr("blocked")
    # One queue id per address keeps its events in order on one partition; the complaint after
    # the policy block is the sentinel that shows the block was judged (and wrote nothing).
    await _publish(
        kafka_settings,
        [
            _ev(
                EventType.BOUNCE,
                hard.upper(),
                "qa",
                code=550,
                enhanced="5.1.1",
                text="no such user",
            ),
            _ev(EventType.COMPLAINT, complained, "qb", pool="", reason="abuse"),
            _ev(EventType.BOUNCE, blocked, "qc", code=550, enhanced="5.7.1", text="blocked (spam)"),
            _ev(EventType.COMPLAINT, blocked, "qc", reason="abuse"),
        ],
    )
    expected = {hard: ["hard-bounce"], complained: ["complaint"], blocked: ["complaint"]}
    found = await _records(kafka_settings, expected, streams)
    assert found == expected, streams.tail()


async def test_repeated_soft_failures_suppress_and_a_delivery_resets(
    streams: StreamsProcess, kafka_settings: KafkaSettings
) -> None:
    dead, revived = _addr("dead"), _addr("revived")
    events = [_expired(dead, "qd", days_ago) for days_ago in (8, 6, 4, 2, 0)]
    events += [_expired(revived, "qr", days_ago) for days_ago in (8, 6, 4, 2)]
    events.append(_ev(EventType.DELIVERY, revived, "qr", days_ago=1, code=250, enhanced="2.0.0"))
    events.append(_expired(revived, "qr", 0))
    events.append(_ev(EventType.COMPLAINT, revived, "qr", reason="abuse"))  # the sentinel
    await _publish(kafka_settings, events)
    expected = {dead: ["repeated-soft-bounce"], revived: ["complaint"]}
    assert await _records(kafka_settings, expected, streams) == expected, streams.tail()


async def test_stale_soft_state_is_swept(
    streams: StreamsProcess, kafka_settings: KafkaSettings, kafka
) -> None:
    # A soft failure older than the window makes an entry that the next sweep of its partition
    # deletes (sweeps run at most every second here); a later event of the same address (a
    # policy block changes nothing) comes after the interval and triggers that sweep.
    stale = _addr("stale")
    changelog = f"{streams.app_id}-soft-failures-changelog"
    key = json.dumps(stale).encode()
    await _publish(kafka_settings, [_expired(stale, "qs", days_ago=40)])
    await read_topic(kafka_settings, changelog, lambda r: r.key == key, expect=1, within=60)
    # The sweep interval is wall time in the processor: an event of the address after it
    # triggers the sweep, so one is sent on each look until the tombstone is there.
    block = {"code": 550, "enhanced": "5.7.1", "text": "blocked"}

    async def swept() -> list[Any]:
        await _publish(kafka_settings, [_ev(EventType.BOUNCE, stale, "qs", **block)])
        found = await read_topic(kafka_settings, changelog, lambda r: r.key == key, expect=1)
        return found if len(found) >= 2 else []

    found = await eventually(swept, within=60, interval=0.3, what="the stale entry swept")
    values = [r.value for r in found]
    assert values[0] is not None and json.loads(values[0])["days"]
    assert values[1] is None  # the tombstone


async def test_healthz_stays_alive_while_processing_and_when_idle(
    streams: StreamsProcess, kafka_settings: KafkaSettings
) -> None:
    answers: list[tuple[int, str]] = []

    def healthz() -> dict[str, Any]:
        status, body = get(streams.url("/healthz"))
        answers.append((status, body))
        return json.loads(body) if body else {}

    # A batch of policy blocks (routed to judge, suppressing nothing) and a sentinel after it.
    sentinel = _addr("healthz")
    block = {"code": 550, "enhanced": "5.7.1", "text": "blocked"}
    events = [_ev(EventType.BOUNCE, _addr("busy"), f"qh{i}", **block) for i in range(300)]
    events.append(_ev(EventType.COMPLAINT, sentinel, "qh-end", reason="abuse"))
    publishing = asyncio.create_task(_publish(kafka_settings, events))

    def probed_until_published() -> bool:
        healthz()
        return publishing.done()

    # /healthz is asked all along the work (a blocking probe in a thread): never 503.
    await eventually(probed_until_published, within=60, what="events published", blocking=True)
    await publishing
    await _records(kafka_settings, {sentinel: ["complaint"]}, streams)
    idle = "route: no work held; judge: no work held; tally: no work held; hygiene: no work held"
    await eventually(
        lambda: healthz().get("detail") == idle,
        within=30,
        what="both agents idle",
        detail=lambda: answers[-3:],
        blocking=True,
    )
    assert answers and all(status == 200 for status, _ in answers), answers
    # The probes saw the work measure move (faust's end offsets against what was processed).
    assert any(" held, last progress" in body for _, body in answers), answers


def test_metrics_readiness_and_a_clean_stop(streams: StreamsProcess) -> None:
    status, body = get(streams.url("/readyz"))
    assert status == 200 and json.loads(body)["status"] == "ready"
    assert get(streams.url("/healthz"))[0] == 200
    wanted = {
        'mailsluice_streams_events_total{pool="default",type="bounce"}': 2,
        'mailsluice_streams_events_total{pool="other",type="complaint"}': 1,
        'mailsluice_streams_suppressions_total{reason="hard-bounce"}': 1,
        'mailsluice_streams_suppressions_total{reason="repeated-soft-bounce"}': 1,
    }

    def counted() -> dict[str, float]:
        """The streams samples once the earlier tests' events are all counted, else {}: they
        waited for their records, and the counting may still be behind on a busy machine."""
        status, text = get(streams.url("/metrics"))
        assert status == 200
        samples = {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("mailsluice_streams_") and not line.startswith("#")
        }
        return samples if all(samples.get(k, 0) >= n for k, n in wanted.items()) else {}

    samples = eventually_sync(counted, within=60, what="the earlier events counted")
    assert samples['mailsluice_streams_errors_total{agent="judge"}'] == 0
    streams.proc.send_signal(signal.SIGTERM)
    assert streams.proc.wait(timeout=60) == 0, streams.tail()
    for line in streams.log.read_text(errors="replace").splitlines():
        assert " ERROR " not in line and " CRITICAL " not in line, line


def test_bad_settings_exit_2_before_kafka() -> None:
    env = {**os.environ, "MAILSLUICE_STREAMS_SOFT_THRESHOLD": "0"}
    done = subprocess.run(
        [str(EXE), "streams"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2
    assert "MAILSLUICE_STREAMS_SOFT_THRESHOLD" in done.stderr


def test_unreachable_kafka_exits_1_after_the_start_timeout() -> None:
    bootstrap = f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        "MAILSLUICE_KAFKA_BOOTSTRAP": bootstrap,
        "MAILSLUICE_STREAMS_START_TIMEOUT_S": "3",
        "MAILSLUICE_STREAMS_HTTP_PORT": str(free_port()),
    }
    began = time.monotonic()
    done = subprocess.run(
        [str(EXE), "streams"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1, done.stderr
    assert bootstrap in done.stderr
    assert 2 < time.monotonic() - began < 30
