"""`make bench`, ingest memory: 20 clients each send a maximum-size message at once, and ingest's
RSS must stay under a stated bound while every one of them gets a correct reply (250, or 452
4.3.1 from the DATA budget; never 451 from a Kafka timeout).

A throwaway Kafka and `mailsluice ingest` with its default size settings (max_message_size 20
MiB, data_budget_bytes 80 MiB); every process started here is stopped by its pid. The bound:
RSS before the load + COPIES x data_budget_bytes, where COPIES is what one byte of a message
in flight costs at most (aiosmtpd's lines and joined content, our queued copy, the producer's
batch and request). Prints its figures; the last line is one JSON object; exit status 1 when
the bound or a reply is wrong.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import kafka_local
from bench_ours import INGEST_IP, Service, create_topics, plumbing_env
from bench_run import say

MiB = 1024 * 1024
CLIENTS = 20
MAX_SIZE = 20 * MiB  # the default max_message_size
BUDGET = 4 * MAX_SIZE  # the default data_budget_bytes
COPIES = 6


def vm_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


def message() -> bytes:
    """Just under the maximum with CRLF lines, as an MTA sends it (dot-stuffing not needed)."""
    line = b"x" * 996 + b"\r\n"
    head = b"From: bench@example.com\r\nTo: r@example.net\r\nSubject: big\r\n\r\n"
    return head + line * ((MAX_SIZE - len(head) - 4096) // len(line))


async def reply(reader: asyncio.StreamReader) -> str:
    while True:
        line = (await asyncio.wait_for(reader.readline(), 300)).decode().rstrip()
        if line[3:4] != "-":
            return line


async def send_one(host: str, port: int, body: bytes, i: int) -> str:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        await reply(reader)
        for command in ("EHLO bench.test", f"MAIL FROM:<s{i}@example.com> SIZE={len(body)}"):
            writer.write(command.encode() + b"\r\n")
            await writer.drain()
            await reply(reader)
        writer.write(b"RCPT TO:<r@example.net>\r\n")
        await reply(reader)
        writer.write(b"DATA\r\n")
        answer = await reply(reader)
        if not answer.startswith("354"):
            return answer
        writer.write(body + b".\r\n")
        await writer.drain()
        return await reply(reader)
    finally:
        writer.close()


def sample_peak(pid: int, stop: threading.Event, peak: list[int]) -> None:
    """VmHWM covers the whole life of the process; VmRSS sampled gives the peak of the load."""
    while not stop.wait(0.05):
        peak[0] = max(peak[0], vm_kib(pid, "VmRSS"))


def run(work: Path, stack: ExitStack) -> dict[str, object]:
    kafka_dir = work / "kafka"
    port = kafka_local.free_port()
    say(f"ingest memory: starting a broker on 127.0.0.1:{port}")
    state = kafka_local.start(kafka_dir, port=port)
    stack.callback(kafka_local.stop, kafka_dir)
    ports = {
        "ingest_smtp": kafka_local.free_port(INGEST_IP),
        "ingest_http": kafka_local.free_port(),
        "delivery_http": kafka_local.free_port(),
    }
    env = plumbing_env(state.bootstrap, "127.0.0.1:53", ports)
    create_topics(env)
    ingest = Service("ingest", ["ingest"], env, work)
    stack.callback(ingest.stop)
    ingest.start(f"http://127.0.0.1:{ports['ingest_http']}/readyz")
    assert ingest.pid is not None
    body = message()
    # One small message first, so the producer and topics are warm, as in production.
    asyncio.run(send_one(INGEST_IP, ports["ingest_smtp"], b"Subject: warm\r\n\r\nx\r\n", 0))
    before = vm_kib(ingest.pid, "VmRSS")
    peak, stop = [before], threading.Event()
    sampler = threading.Thread(target=sample_peak, args=(ingest.pid, stop, peak), daemon=True)
    sampler.start()
    started = time.monotonic()

    async def all_clients() -> list[str]:
        sends = (send_one(INGEST_IP, ports["ingest_smtp"], body, i) for i in range(CLIENTS))
        return list(await asyncio.gather(*sends))

    answers = asyncio.run(all_clients())
    seconds = time.monotonic() - started
    stop.set()
    sampler.join()
    bound_kib = before + COPIES * BUDGET // 1024
    replies: dict[str, int] = {}
    for answer in answers:
        key = answer[:9]
        replies[key] = replies.get(key, 0) + 1
    return {
        "clients": CLIENTS,
        "message_bytes": len(body),
        "data_budget_bytes": BUDGET,
        "rss_before_mib": round(before / 1024, 1),
        "rss_peak_mib": round(peak[0] / 1024, 1),
        "rss_bound_mib": round(bound_kib / 1024, 1),
        "seconds": round(seconds, 1),
        "replies": replies,
        "ok": peak[0] <= bound_kib and all(a.startswith(("250 ", "452 4.3.1")) for a in answers),
    }


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bench-ingest-mem-") as tmp, ExitStack() as stack:
        figures = run(Path(tmp), stack)
    for name, value in figures.items():
        say(f"ingest memory: {name} = {value}")
    print(json.dumps(figures))
    return 0 if figures["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
