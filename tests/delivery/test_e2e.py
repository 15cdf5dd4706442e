"""Delivery with the real SMTP transport to fake MX servers, through the real broker; and a
worker process killed with SIGKILL in the middle of a run."""

from __future__ import annotations

import collections
import sys
from pathlib import Path
from typing import Any

from support.delivery_worker import (
    EventLog,
    Running,
    committed,
    committed_to_end,
    enqueue,
    envelope,
    new_pool,
    setup_pool,
)
from support.eventually import eventually
from support.fake_mx import free_port
from support.processes import get, product_env, start, stop, tails

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
            await events.expect_final(keys)
            # Two DSNs (bounce of 0, expiry of 1) go back to s@origin.example; none for the
            # null-sender message 3.
            await eventually(
                lambda: (
                    sum(
                        1
                        for e in events.of(EventType.DELIVERY)
                        if e.recipient == "s@origin.example"
                    )
                    >= 2
                ),
                within=60,
                what="two DSNs delivered",
                detail=events.summary,
            )
            # Every queue record, any further DSN included, finished: what the MX got is all.
            await committed_to_end(ks, pool)
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


# Sends per destination, and messages per slot that may await their events' acknowledgement.
SLOTS, DEPTH = 2, 3


def _worker_env(kafka: Any, pool: str, mx_address: str, dns_nameserver: str) -> dict[str, str]:
    return product_env(
        kafka.bootstrap,
        MAILSLUICE_KAFKA_QUEUE_PARTITIONS="3",
        MAILSLUICE_DELIVERY_POOL=pool,
        MAILSLUICE_DELIVERY_HTTP_PORT=str(free_port()),
        MAILSLUICE_DELIVERY_COMMIT_INTERVAL_S="0.5",
        MAILSLUICE_DELIVERY_DEST_MAX_CONCURRENCY=str(SLOTS),
        MAILSLUICE_DELIVERY_OUTCOME_DEPTH=str(DEPTH),
        # crash durability is measured here, not learning: limits as configured
        MAILSLUICE_SHAPING_POOL_OVERRIDES='{"defaults": {"adaptive": false}}',
        MAILSLUICE_OUTBOUND_STATIC_ROUTES=f"*={mx_address}",
        MAILSLUICE_DNS_NAMESERVERS=dns_nameserver,
    )


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
        worker = [str(VENV_BIN / "mailsluice"), "delivery"]
        proc = start(worker, env, log_path)

        def delivered(count: int) -> bool:
            assert proc.poll() is None, tails([log_path])
            return len(mx.messages) >= count

        try:
            await eventually(
                lambda: delivered(n_messages // 5),
                within=60,
                interval=0.01,
                what="a fifth of the messages delivered",
                detail=lambda: tails([log_path]),
            )
            before = await committed(ks, pool)
            proc.kill()  # SIGKILL: no drain, no commit
            proc.wait(10)
            killed_at = len(mx.messages)
            assert killed_at < n_messages, "the run finished before the kill; make it slower"
            proc = start(worker, env, log_path)
            readyz = f"http://127.0.0.1:{env['MAILSLUICE_DELIVERY_HTTP_PORT']}/readyz"
            statuses: list[int] = []

            def ready() -> bool:
                statuses.append(get(readyz)[0])
                return statuses[-1] == 200

            # Not ready while the group waits for the killed member's session to expire.
            await eventually(
                ready,
                within=60,
                interval=0.1,
                what="the restarted worker's assignment",
                detail=lambda: tails([log_path]),
                blocking=True,
            )
            assert 503 in statuses
            await events.expect_final(keys, within=120)
            await committed_to_end(ks, pool)
        finally:
            stop(proc)
    assert proc.returncode == 0, log_path.read_text()[-3000:]
    received = collections.Counter(r for m in mx.messages for r in m.rcpt_tos)
    wanted = {r for _, r in keys}
    assert wanted <= set(received)  # none lost
    duplicates = sum(received[r] - 1 for r in wanted)
    # Delivered-but-uncommitted records come again, but the restarted worker reads back their
    # delivery events (dedup warm-up); only sends whose event was not yet acknowledged at the
    # kill repeat: at most DEPTH messages per slot (10 destinations x SLOTS, 2 recipients each).
    print(f"killed after {killed_at} messages; committed {before}; duplicates: {duplicates}")
    assert duplicates <= DEPTH * 10 * SLOTS * 2
    finals = events.finals()
    assert all(finals[k] >= 1 for k in keys)
    assert not any(e.type == EventType.BOUNCE for e in events.events)
