"""The operator endpoints every service serves, and the JSON log format."""

from __future__ import annotations

import json
import logging

import aiohttp
from prometheus_client import CollectorRegistry, Counter
from support.loopback import free_port

from mailsluice.config import LogSettings
from mailsluice.observability.endpoints import JsonFormatter, Repeats, setup_logging, start_http

# Its own registry: the process-wide one holds only the product's metrics (test_metrics_doc).
REGISTRY = CollectorRegistry()
PROBE = Counter("probe_total", "A counter only this test increments.", registry=REGISTRY)


async def test_endpoints_report_health_readiness_and_metrics() -> None:
    state = {"ready": False}
    port = free_port()
    runner = await start_http(
        "127.0.0.1",
        port,
        lambda: (state["ready"], "kafka" if not state["ready"] else ""),
        REGISTRY,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        PROBE.inc()
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/healthz") as resp:
                assert resp.status == 200
                assert (await resp.json())["status"] == "ok"
            async with http.get(f"{base}/readyz") as resp:
                assert resp.status == 503
                assert (await resp.json())["detail"] == "kafka"
            state["ready"] = True
            async with http.get(f"{base}/readyz") as resp:
                assert resp.status == 200
            async with http.get(f"{base}/metrics") as resp:
                body = await resp.text()
                assert resp.headers["Content-Type"].startswith("text/plain")
                assert "probe_total 1.0" in body
    finally:
        await runner.cleanup()


def test_json_log_lines_carry_the_context_fields() -> None:
    record = logging.LogRecord(
        "mailsluice.x", logging.WARNING, __file__, 1, "hello %s", ("you",), None
    )
    record.queue_id = "01ABC"
    record.pool = "default"
    entry = json.loads(JsonFormatter().format(record))
    assert entry["msg"] == "hello you"
    assert entry["level"] == "warning"
    assert entry["queue_id"] == "01ABC"
    assert entry["pool"] == "default"
    assert "destination" not in entry


def test_setup_logging_installs_one_handler() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging(LogSettings(level="DEBUG", json_format=True), "test")
        assert len(root.handlers) == 1
        assert isinstance(root.handlers[0].formatter, JsonFormatter)
        assert root.level == logging.DEBUG
        assert logging.getLogger("aiokafka").level == logging.WARNING
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


def test_a_kafka_client_retrying_into_an_outage_logs_once_per_interval() -> None:
    now = {"t": 0.0}
    repeats = Repeats("aiokafka", interval_s=10.0, clock=lambda: now["t"])

    def record(name: str, msg: str) -> logging.LogRecord:
        return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, ("1",), None)

    passed = []
    for _ in range(1000):  # a second of "Unable connect to node" at aiokafka's pace
        r = record("aiokafka", "Unable connect to node with id %s")
        if repeats.filter(r):
            passed.append(r.getMessage())
        now["t"] += 0.001
    assert passed == ["Unable connect to node with id 1"]
    now["t"] = 11.0
    r = record("aiokafka", "Unable connect to node with id %s")
    assert repeats.filter(r)
    assert r.getMessage() == "Unable connect to node with id 1 (999 more like it in the last 11 s)"
    # the service's own lines (one per message) are never held back
    ours = [record("mailsluice.ingest.handler", "queued %s") for _ in range(5)]
    assert all(repeats.filter(r) for r in ours)
