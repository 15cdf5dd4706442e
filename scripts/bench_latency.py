"""Latency for `make bench`: an open-loop SMTP client that stamps every message with the time
it was due, and a small aiosmtpd sink that records when each arrives; p50/p99 of the difference.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import TYPE_CHECKING, Any

from bench_run import Plan, Report, say
from bench_tools import AiosmtpdSink, percentile, split_hostport

if TYPE_CHECKING:
    import aiosmtplib

LATENCY_DOMAIN = "latency.example"
SENT_HEADER = "X-Bench-Sent"
SENT_RE = re.compile(rb"^X-Bench-Sent: *([0-9.]+)\r?$", re.MULTILINE | re.IGNORECASE)


def latency_summary(samples_ms: list[float]) -> dict[str, float | None]:
    """p50, p99 and max of latencies in milliseconds, rounded."""

    def r(value: float | None) -> float | None:
        return None if value is None else round(value, 1)

    return {
        "p50": r(percentile(samples_ms, 50)),
        "p99": r(percentile(samples_ms, 99)),
        "max": r(max(samples_ms) if samples_ms else None),
    }


def parse_sent_stamp(content: bytes) -> float | None:
    """The epoch seconds in the X-Bench-Sent header of a raw message, if any."""
    header_end = content.find(b"\r\n\r\n")
    if header_end < 0:
        header_end = content.find(b"\n\n")
    head = content if header_end < 0 else content[:header_end]
    match = SENT_RE.search(head)
    return float(match.group(1)) if match else None


class LatencySink(AiosmtpdSink):
    """An aiosmtpd server that records (sent stamp, received time) for every message."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.samples_ms: list[float] = []
        self.unstamped = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        received = time.time()
        sent = parse_sent_stamp(envelope.original_content or envelope.content or b"")
        with self._lock:
            if sent is None:
                self.unstamped += 1
            else:
                self.samples_ms.append((received - sent) * 1000)
        return "250 2.0.0 OK"

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.samples_ms) + self.unstamped


def _latency_message(seq: int, due_epoch: float, body: str) -> str:
    return (
        f"From: <bench@example.com>\r\nTo: <lat{seq}@{LATENCY_DOMAIN}>\r\n"
        f"Subject: latency {seq}\r\nMessage-ID: <lat{seq}.{due_epoch}@bench.invalid>\r\n"
        f"{SENT_HEADER}: {due_epoch:.6f}\r\n\r\n{body}"
    )


async def _open_pool(host: str, port: int, connections: int) -> asyncio.Queue[aiosmtplib.SMTP]:
    import aiosmtplib

    pool: asyncio.Queue[aiosmtplib.SMTP] = asyncio.Queue()
    for _ in range(connections):
        client = aiosmtplib.SMTP(hostname=host, port=port, timeout=30, start_tls=False)
        await client.connect()
        pool.put_nowait(client)
    return pool


async def _close_pool(pool: asyncio.Queue[aiosmtplib.SMTP]) -> None:
    import aiosmtplib

    while not pool.empty():
        client = pool.get_nowait()
        if client.is_connected:
            try:
                await client.quit()
            except (aiosmtplib.SMTPException, OSError):
                client.close()


async def _latency_client(
    target: tuple[str, int], rate_per_s: float, seconds: float, connections: int, size: int
) -> tuple[int, int]:
    """Send rate*seconds messages open-loop; each stamped with its due time. (sent, failed)."""
    import aiosmtplib

    host, port = target
    total = int(rate_per_s * seconds)
    pool = await _open_pool(host, port, connections)
    body = ("x" * 76 + "\r\n") * max(1, size // 78)
    failed = 0

    async def send(seq: int, due_epoch: float) -> None:
        nonlocal failed
        message = _latency_message(seq, due_epoch, body)
        client = await pool.get()
        try:
            if not client.is_connected:
                await client.connect()
            await client.sendmail("bench@example.com", [f"lat{seq}@{LATENCY_DOMAIN}"], message)
        except (aiosmtplib.SMTPException, OSError):
            failed += 1
            client.close()
        finally:
            pool.put_nowait(client)

    loop = asyncio.get_running_loop()
    start_mono, start_epoch = loop.time(), time.time()
    tasks = []
    for seq in range(total):
        offset = seq / rate_per_s
        await asyncio.sleep(max(0.0, start_mono + offset - loop.time()))
        # Stamp the due time, not the send time: a late send is latency too.
        tasks.append(asyncio.create_task(send(seq, start_epoch + offset)))
    await asyncio.gather(*tasks)
    await _close_pool(pool)
    return total, failed


def measure_latency(plan: Plan, latency_sink: LatencySink, target: str, report: Report) -> None:
    say(f"latency: {plan.latency_rate:g} msg/s for {plan.latency_seconds:g} s")
    host, port = split_hostport(target)
    before = latency_sink.count
    sent, failed = asyncio.run(
        _latency_client((host, port), plan.latency_rate, plan.latency_seconds, 8, plan.size)
    )
    deadline = time.monotonic() + 30
    while latency_sink.count - before < sent - failed and time.monotonic() < deadline:
        time.sleep(0.1)
    samples = list(latency_sink.samples_ms)
    received = latency_sink.count - before
    summary = latency_summary(samples)
    report.figures["e2e_p50_ms"] = summary["p50"]
    report.figures["e2e_p99_ms"] = summary["p99"]
    report.figures["latency"] = {
        "rate_per_s": plan.latency_rate,
        "seconds": plan.latency_seconds,
        "sent": sent,
        "failed": failed,
        "received": received,
        "max_ms": summary["max"],
    }
    say(f"latency: p50 {summary['p50']} ms, p99 {summary['p99']} ms, max {summary['max']} ms")
    if failed or received < sent:
        raise RuntimeError(f"{failed} sends failed, {received}/{sent} received")
