"""`mailsluice streams` run by the tests: a subprocess (faust's own warnings stay out of the test
process) with its log, probed over HTTP and stopped by pid; started at the end of the events
topic so it reads only the events written after."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mailsluice.contracts.topics import (
    CAMPAIGN_STATS_TOPIC,
    ENGAGEMENT_DAYS_TOPIC,
    EVENTS_TOPIC,
    SUPPRESSIONS_TOPIC,
)
from mailsluice.kafka.admin import ensure_topics, standard_topics, topic_partitions
from mailsluice.kafka.clients import make_consumer
from mailsluice.kafka.settings import KafkaSettings
from support.eventually import eventually_sync
from support.loopback import free_port
from support.paths import REPO

EXE = REPO / ".venv" / "bin" / "mailsluice"


@dataclass
class StreamsProcess:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    app_id: str

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


async def start_at_end(kafka_settings: KafkaSettings, group: str) -> None:
    """Commit the group's offsets at the end of the events topic, so the processor reads only
    the test's events (not every event the session wrote before)."""
    tps = await topic_partitions(kafka_settings, EVENTS_TOPIC, 30)
    consumer = make_consumer(kafka_settings, group_id=group, client_id="test-streams-offsets")
    await consumer.start()
    try:
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        await consumer.commit(dict(ends))
    finally:
        await consumer.stop()


def prepare(kafka_settings: KafkaSettings, app_id: str) -> None:
    """The topics the processor reads and writes, and its group at the end of the events."""
    wanted = (EVENTS_TOPIC, SUPPRESSIONS_TOPIC, CAMPAIGN_STATS_TOPIC, ENGAGEMENT_DAYS_TOPIC)
    specs = [s for s in standard_topics(kafka_settings, [], 1 << 20) if s.name in wanted]
    asyncio.run(ensure_topics(kafka_settings, specs))
    asyncio.run(start_at_end(kafka_settings, app_id))


@contextmanager
def running(
    bootstrap: str, app_id: str, workdir: Path, **settings: str
) -> Iterator[StreamsProcess]:
    """The processor, ready (/readyz 200), stopped with SIGTERM by pid after."""
    port = free_port()
    log = workdir / "streams.log"
    env = {
        **os.environ,
        "MAILSLUICE_KAFKA_BOOTSTRAP": bootstrap,
        "MAILSLUICE_STREAMS_APP_ID": app_id,
        "MAILSLUICE_STREAMS_HTTP_PORT": str(port),
        "MAILSLUICE_LOG_JSON_FORMAT": "false",
        "TMPDIR": str(workdir),  # faust's data directory
        **settings,
    }
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [str(EXE), "streams"], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=workdir
        )
    process = StreamsProcess(proc, port, log, app_id)
    try:

        def ready() -> bool:
            assert proc.poll() is None, f"streams exited early:\n{process.tail()}"
            return get(process.url("/readyz"))[0] == 200

        eventually_sync(ready, within=120, interval=0.3, what="streams ready", detail=process.tail)
        yield process
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
