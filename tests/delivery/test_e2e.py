"""Delivery with the real SMTP transport to fake MX servers, through the real broker; and a
worker process killed with SIGKILL in the middle of a run."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from support.delivery_worker import (
    EventLog,
    Running,
    committed,
    enqueue,
    envelope,
    new_pool,
    setup_pool,
)
from support.fake_mx import free_port

from mailsluice.contracts.events import EventType
from mailsluice.delivery.service import DeliveryService
from mailsluice.delivery.transport.client import Transport
from mailsluice.delivery.transport.settings import OutboundSettings
from mailsluice.delivery.worker.dsn import build_dsn
from mailsluice.delivery.worker.settings import DeliverySettings
from mailsluice.resolver import DnsSettings, make_resolver

VENV_BIN = Path(sys.executable).parent


async def test_real_transport_delivers_bounces_retries_and_expires(
    kafka: Any, fake_mx: Any, dns_nameserver: str
) -> None:
    ks = kafka.settings(queue_partitions=2)
    pool = new_pool()
    await setup_pool(ks, pool)
    mx = fake_mx()
    outbound = OutboundSettings(static_routes=f"*={mx.address}", connect_timeout_s=5)
    transport = Transport(outbound, make_resolver(DnsSettings(nameservers=dns_nameserver)))
    settings = DeliverySettings(
        pool=pool, commit_interval_s=0.2, retry_base_s=0.5, retry_max_s=1.0, expiry_s=3.0
    )
    service = DeliveryService(settings, ks, transport, build_dsn=build_dsn)
    try:
        async with EventLog(ks, pool) as events, Running(service):
            envs = [
                envelope(pool, 0, ("ok1@b.example", "ok2@b.example", "permfail+1@b.example")),
                envelope(pool, 1, ("tempfail+1@c.example",)),
                envelope(pool, 2, ("ok3@c.example",), sender=""),
                envelope(pool, 3, ("permfail+2@d.example",), sender=""),
            ]
            await enqueue(ks, envs)
            keys = {(e.queue_id, r) for e in envs for r in e.recipients}
            await events.wait_for(lambda: keys <= set(events.finals()), within=60)
            # Two DSNs (bounce of 0, expiry of 1) go back to s@origin.example; none for the
            # null-sender message 3.
            await events.wait_for(
                lambda: (
                    sum(
                        1
                        for e in events.of(EventType.DELIVERY)
                        if e.recipient == "s@origin.example"
                    )
                    >= 2
                )
            )
            await asyncio.sleep(0.5)
    finally:
        await transport.close()
    types = {(e.queue_id, e.recipient): e.type for e in events.events if e.type in events_final()}
    q = [e.queue_id for e in envs]
    assert types[(q[0], "ok1@b.example")] == EventType.DELIVERY
    assert types[(q[0], "permfail+1@b.example")] == EventType.BOUNCE
    assert types[(q[1], "tempfail+1@c.example")] == EventType.EXPIRATION
    assert types[(q[2], "ok3@c.example")] == EventType.DELIVERY
    assert types[(q[3], "permfail+2@d.example")] == EventType.BOUNCE
    bounce = next(e for e in events.of(EventType.BOUNCE) if e.recipient == "permfail+1@b.example")
    assert (bounce.code, bounce.enhanced) == (550, "5.1.1")
    assert mx.address in bounce.remote or bounce.remote
    deferrals = [e for e in events.of(EventType.TRANSIENT_FAILURE) if e.queue_id == q[1]]
    assert len(deferrals) >= 2  # really retried through the delay topic
    dsns = [m for m in mx.messages if m.rcpt_tos == ("s@origin.example",)]
    assert len(dsns) == 2
    assert all(m.mail_from in ("", "<>") for m in dsns)
    texts = b"\n".join(m.data for m in dsns)
    assert b"permfail+1@b.example" in texts
    assert b"tempfail+1@c.example" in texts
    assert b"permfail+2@d.example" not in texts
    delivered = [r for m in mx.messages for r in m.rcpt_tos]
    assert sorted(r for r in delivered if r.startswith("ok")) == [
        "ok1@b.example",
        "ok2@b.example",
        "ok3@c.example",
    ]


def events_final() -> set[EventType]:
    return {EventType.DELIVERY, EventType.BOUNCE, EventType.EXPIRATION}


def _worker_env(kafka: Any, pool: str, mx_address: str, dns_nameserver: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSLUICE_")}
    env.update(
        MAILSLUICE_KAFKA_BOOTSTRAP=kafka.bootstrap,
        MAILSLUICE_KAFKA_QUEUE_PARTITIONS="3",
        MAILSLUICE_DELIVERY_POOL=pool,
        MAILSLUICE_DELIVERY_HTTP_PORT=str(free_port()),
        MAILSLUICE_DELIVERY_COMMIT_INTERVAL_S="0.5",
        MAILSLUICE_DELIVERY_DEST_MAX_CONCURRENCY="2",
        MAILSLUICE_OUTBOUND_STATIC_ROUTES=f"*={mx_address}",
        MAILSLUICE_DNS_NAMESERVERS=dns_nameserver,
        MAILSLUICE_LOG_LEVEL="INFO",
    )
    return env


def _start_worker(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as out:
        return subprocess.Popen(
            [str(VENV_BIN / "mailsluice"), "delivery"], env=env, stdout=out, stderr=out
        )


async def _ready(port: int, within: float) -> tuple[bool, bool]:
    """Poll /readyz until it answers 200 (the worker has its assignment); also tell whether
    it answered 503 before that."""

    def get() -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except OSError:
            return 0

    deadline = time.monotonic() + within
    seen_not_ready = False
    while time.monotonic() < deadline:
        status = await asyncio.to_thread(get)
        if status == 200:
            return True, seen_not_ready
        seen_not_ready = seen_not_ready or status == 503
        await asyncio.sleep(0.1)
    return False, seen_not_ready


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


async def test_sigkill_mid_run_loses_nothing_and_duplicates_stay_small(
    kafka: Any, fake_mx: Any, dns_nameserver: str, tmp_path: Path
) -> None:
    n_messages = 300
    ks = kafka.settings(queue_partitions=3)
    pool = new_pool()
    await setup_pool(ks, pool)
    mx = fake_mx(delay=0.01)
    env = _worker_env(kafka, pool, mx.address, dns_nameserver)
    log_path = tmp_path / "worker.log"
    envs = [
        envelope(pool, n, tuple(f"r{n}-{i}@d{n % 10}.example" for i in range(1 + n % 2)))
        for n in range(n_messages)
    ]
    keys = {(e.queue_id, r) for e in envs for r in e.recipients}
    async with EventLog(ks, pool) as events:
        await enqueue(ks, envs)
        proc = _start_worker(env, log_path)
        try:
            deadline = time.monotonic() + 60
            while len(mx.messages) < n_messages // 5:
                assert proc.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, log_path.read_text()[-3000:]
                await asyncio.sleep(0.01)
            before = await committed(ks, pool)
            proc.kill()  # SIGKILL: no drain, no commit
            proc.wait(10)
            killed_at = len(mx.messages)
            assert killed_at < n_messages, "the run finished before the kill; make it slower"
            proc = _start_worker(env, log_path)
            port = int(env["MAILSLUICE_DELIVERY_HTTP_PORT"])
            # Not ready while the group waits for the killed member's session to expire.
            ready, was_not_ready = await _ready(port, within=60)
            assert ready, log_path.read_text()[-3000:]
            assert was_not_ready
            await events.wait_for(lambda: keys <= set(events.finals()), within=120)
            deadline = time.monotonic() + 30
            while sum((await committed(ks, pool)).values()) < n_messages:
                assert time.monotonic() < deadline, await committed(ks, pool)
                await asyncio.sleep(0.3)
        finally:
            _stop(proc)
    assert proc.returncode == 0, log_path.read_text()[-3000:]
    received = collections.Counter(r for m in mx.messages for r in m.rcpt_tos)
    wanted = {r for _, r in keys}
    assert wanted <= set(received)  # none lost
    duplicates = sum(received[r] - 1 for r in wanted)
    # Delivered-but-uncommitted records come again, but the restarted worker reads back their
    # delivery events (dedup warm-up); only sends whose event was not yet acknowledged at the
    # kill repeat: at most what was in flight (10 destinations x 2 connections x 2 recipients).
    print(f"killed after {killed_at} messages; committed {before}; duplicates: {duplicates}")
    assert duplicates <= 10 * 2 * 2
    finals = events.finals()
    assert all(finals[k] >= 1 for k in keys)
    assert not any(e.type == EventType.BOUNCE for e in events.events)
