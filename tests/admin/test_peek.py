"""`mailsluice peek` shows the newest queue records with their envelopes, and events."""

from __future__ import annotations

import asyncio
import json
import os

from support.delivery_worker import enqueue, envelope

from mailsluice.cli import main
from mailsluice.kafka.admin import ensure_topics, standard_topics


async def test_peek_prints_newest_records_of_a_pool_queue(kafka, monkeypatch, capsys) -> None:
    settings = kafka.settings(queue_partitions=2)
    pool = "peek" + os.urandom(3).hex()
    await ensure_topics(settings, standard_topics(settings, [pool], 1 << 20))
    envs = [
        envelope(pool, n, (f"r{n}@c.test",), "a@b.test", queue_id=f"Q{n}", received_at=1.0)
        for n in range(3)
    ]
    await enqueue(
        settings, envs, lambda env: f"Subject: number {env.queue_id[1:]}\r\n\r\nbody\r\n".encode()
    )
    monkeypatch.setenv("MAILSLUICE_KAFKA_BOOTSTRAP", kafka.bootstrap)
    # peek runs its own event loop: call it from a thread, away from the test's loop
    code = await asyncio.to_thread(main, ["peek", "--pool", pool, "-n", "2"])
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    # one partition holds all three (same key); the newest two are shown
    assert [r["envelope"]["queue_id"] for r in lines] == ["Q1", "Q2"]
    assert lines[-1]["subject"] == "number 2"
    assert lines[-1]["envelope"]["recipients"] == ["r2@c.test"]


async def test_peek_at_a_missing_topic_says_so(kafka, monkeypatch, capsys) -> None:
    monkeypatch.setenv("MAILSLUICE_KAFKA_BOOTSTRAP", kafka.bootstrap)
    assert await asyncio.to_thread(main, ["peek", "--topic", "no.such.topic"]) == 1
    assert "no.such.topic does not exist" in capsys.readouterr().err
