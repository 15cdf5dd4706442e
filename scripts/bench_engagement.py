"""`make bench`, engagement: the tracker service's requests per second, tracking's cost per
copy at delivery, and the memory of the engagement store (scripts/bench_engagement_cpu.py).

Tracker: starts a throwaway single Kafka broker, creates the topics, starts `mailsluice
tracker` with one token key, and has CLIENTS aiohttp clients at once load click links (each a
302, not followed) for SECONDS, then the open pixel for SECONDS; tokens of MESSAGES messages,
sent an hour before (not "too soon"). Prints requests per second, p50/p99 of one request, the
open and click events on mailsluice.events (read back from the start) and how fast the
tracker wrote them (by the records' timestamps), and the tracker's resident memory. Every
process started here is stopped by its pid. The last line is JSON; figures are printed, never
asserted: they move with the machine's load (the clients share its CPUs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp
import bench_engagement_cpu as cpu
import kafka_local
from bench_ours import MAILSLUICE, Service, create_topics, start_broker
from bench_run import say
from bench_tools import new_result, percentile, tail

from mailsluice.contracts.events import decode_event
from mailsluice.contracts.topics import EVENTS_TOPIC
from mailsluice.kafka.admin import topic_partitions
from mailsluice.kafka.clients import make_consumer
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.tracking.tokens import Mark, TrackingKeys

CLIENTS = 32
SECONDS = 8.0
MESSAGES = 500
KEY_ID, SECRET = "b1", "bench-tracker-key-0123456789abcdef"
READ_BACK_S = 30.0


def urls(base: str, kind: str, messages: int) -> list[str]:
    """Open (pixel) or click URLs of `messages` messages, five links each for clicks."""
    keys = TrackingKeys({KEY_ID: SECRET.encode()})
    sent = int(time.time()) - 3600
    found = []
    for i in range(messages):
        mark = Mark("open", f"bq{i}", f"reader{i}@dest.example", sent, "default", "dest.example",
                    "bench", "winter")  # fmt: skip
        if kind == "open":
            found.append(keys.open_url(base, mark))
        else:
            shop = "https://shop.example/p/"
            found += [keys.click_url(base, mark, n, f"{shop}{n}") for n in range(5)]
    return found


async def load(targets: list[str], clients: int, seconds: float) -> dict[str, Any]:
    """`clients` clients GET the targets in turn for `seconds`: requests/s and latency."""
    times: list[float] = []
    failed = 0
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as http:
        deadline = time.monotonic() + seconds

        async def client(offset: int) -> None:
            nonlocal failed
            i = offset
            while time.monotonic() < deadline:
                started = time.monotonic()
                async with http.get(targets[i % len(targets)], allow_redirects=False) as resp:
                    await resp.read()
                    if resp.status not in (200, 302):
                        failed += 1
                times.append(time.monotonic() - started)
                i += clients

        started = time.monotonic()
        await asyncio.gather(*(client(n) for n in range(clients)))
        wall = time.monotonic() - started
    return {
        "requests": len(times),
        "requests_per_s": round(len(times) / wall),
        "p50_ms": round((percentile(times, 50) or 0) * 1000, 2),
        "p99_ms": round((percentile(times, 99) or 0) * 1000, 2),
        "failed": failed,
    }


async def read_events(bootstrap: str, expected: int, within: float) -> dict[str, Any]:
    """Open and click events on mailsluice.events, read from the start until `expected` are
    there (or `within` seconds pass); how fast they were written, by their timestamps."""
    settings = KafkaSettings(bootstrap=bootstrap)
    partitions = await topic_partitions(settings, EVENTS_TOPIC, 30)
    consumer = make_consumer(settings, group_id=None, client_id=f"bench-{uuid.uuid4().hex}")
    await consumer.start()
    stamps: list[int] = []
    kinds: dict[str, int] = {}
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        deadline = time.monotonic() + within
        while len(stamps) < expected and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for records in batches.values():
                for record in records:
                    kind = decode_event(record.value).type.value
                    kinds[kind] = kinds.get(kind, 0) + 1
                    stamps.append(record.timestamp)
    finally:
        await consumer.stop()
    span = (max(stamps) - min(stamps)) / 1000 if len(stamps) > 1 else 0.0
    return {
        "events": len(stamps),
        "events_by_type": kinds,
        "events_written_per_s": round(len(stamps) / span) if span > 0 else None,
    }


def tracker_env(work: Path, bootstrap: str, port: int, ops: int) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("MAILSLUICE_")},
        "MAILSLUICE_KAFKA_BOOTSTRAP": bootstrap,
        "MAILSLUICE_LOG_JSON_FORMAT": "false",
        "MAILSLUICE_TRACKING_KEYS": f"{KEY_ID}:{SECRET}",
        "MAILSLUICE_TRACKING_URL": "https://t.bench.example",
        "MAILSLUICE_TRACKING_LISTEN_HOST": "127.0.0.1",
        "MAILSLUICE_TRACKING_LISTEN_PORT": str(port),
        "MAILSLUICE_TRACKING_HTTP_PORT": str(ops),
    }


def tracker(args: argparse.Namespace, work: Path, result: dict[str, Any]) -> None:
    with ExitStack() as stack:
        bootstrap = start_broker(stack, work)
        port, ops = kafka_local.free_port(), kafka_local.free_port()
        env = tracker_env(work, bootstrap, port, ops)
        create_topics(env)
        service = Service("tracker", ["tracker"], env, work)
        stack.callback(service.stop)
        service.start(f"http://127.0.0.1:{ops}/readyz")
        say(f"tracker: ready (pid {service.pid}); {args.clients} clients, {args.seconds} s a kind")
        base = f"http://127.0.0.1:{port}"
        try:
            for kind in ("click", "open"):
                targets = urls(base, kind, args.messages)
                result[kind] = asyncio.run(load(targets, args.clients, args.seconds))
            expected = result["click"]["requests"] + result["open"]["requests"]
            result.update(asyncio.run(read_events(bootstrap, expected, READ_BACK_S)))
        except Exception:
            say(f"tracker log: {tail(service.log_path, 15)}")
            raise
        result["tracker_peak_rss_mb"] = service.peak_rss_mb()
        result["tracker_rss_mb"] = _rss_mb(service.pid)
        say("stopping everything")


def _rss_mb(pid: int | None) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    kb = next((line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return round(int(kb) / 1024, 1)


def report(result: dict[str, Any]) -> None:
    for kind, what in (("click", "click redirects (302)"), ("open", "pixel loads (GIF)")):
        if kind in result:
            f = result[kind]
            print(
                f"Tracker, {what}, {result['clients']} clients:\n"
                f"  requests/s {f['requests_per_s']:>8}   p50 {f['p50_ms']:6.2f} ms   "
                f"p99 {f['p99_ms']:6.2f} ms   ({f['requests']} requests, {f['failed']} failed)",
                flush=True,
            )
    if "events" in result:
        print(
            f"  events on {EVENTS_TOPIC}: {result['events']} {result['events_by_type']}, "
            f"written at {result['events_written_per_s']}/s; tracker RSS "
            f"{result['tracker_rss_mb']} MB (peak {result['tracker_peak_rss_mb']} MB)",
            flush=True,
        )
    cpu.report(result)
    print(json.dumps(result), flush=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=CLIENTS)
    parser.add_argument("--seconds", type=float, default=SECONDS)
    parser.add_argument("--messages", type=int, default=MESSAGES)
    parser.add_argument("--addresses", type=int, default=cpu.ADDRESSES)
    parser.add_argument("--copies", type=int, default=cpu.COPIES)
    parser.add_argument("--no-tracker", action="store_true", help="skip the Kafka part")
    args = parser.parse_args(argv)
    result = new_result("engagement", clients=args.clients, cpus=os.cpu_count())
    signal.signal(signal.SIGTERM, _interrupt)  # unwind through the stops (by pid)
    try:
        result.update(cpu.rewriting(args.copies))
        result.update(cpu.store_memory(args.addresses))
        if not args.no_tracker:
            if not MAILSLUICE.exists():
                raise RuntimeError(f"{MAILSLUICE} missing (run make setup)")
            work = Path(tempfile.mkdtemp(prefix="mailsluice-bench-engagement-"))
            say(f"work dir {work}")
            tracker(args, work, result)
    except KeyboardInterrupt:
        result["errors"].append("interrupted")
    except Exception as exc:
        result["errors"].append(f"engagement: {exc}")
        say(f"FAILED {exc}")
    result["loadavg_at_end"] = [round(v, 2) for v in os.getloadavg()]
    report(result)
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
