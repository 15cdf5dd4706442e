"""Resource caps over real SMTP: connections per client address and in all, junk commands and
aborted transactions per connection, the DATA byte budget (452 4.3.1), and size judged once
line ends are CRLF (552 5.3.4, never 451 for ever)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from support.eventually import eventually
from support.ingest import RawClient, running_ingest

from mailsluice.ingest import caps
from mailsluice.ingest.service import IngestService

MAX_SIZE = 65536
UNTRUSTED = "127.0.0.2"  # loopback, but outside this module's trusted network


@pytest.fixture(scope="module")
async def ingest(kafka_settings, dns_nameserver) -> AsyncIterator[IngestService]:
    async with running_ingest(
        kafka_settings,
        dns_nameserver,
        is_suppressed=lambda address, _scopes: False,
        trusted_networks="127.0.0.1/32",
        max_connections_per_ip=3,
        max_connections=8,
        max_message_size=MAX_SIZE,
        data_budget_bytes=MAX_SIZE,
        data_budget_wait_s=30.0,
    ) as service:
        yield service


async def connect(port: int, source: str = "127.0.0.1") -> tuple[RawClient, str]:
    """A connection and its first reply (220, or the 421 of a cap)."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, local_addr=(source, 0), limit=1 << 20
    )
    client = RawClient(reader, writer)
    return client, await client.reply()


@contextlib.asynccontextmanager
async def connections(port: int, count: int, source: str) -> AsyncIterator[list[RawClient]]:
    clients = []
    try:
        for _ in range(count):
            client, greeting = await connect(port, source)
            clients.append(client)
            assert greeting.startswith("220 "), greeting
        yield clients
    finally:
        for client in clients:
            await client.close()


async def test_per_ip_cap(ingest: IngestService) -> None:
    async with connections(ingest.port, 3, UNTRUSTED) as clients:
        extra, reply = await connect(ingest.port, UNTRUSTED)
        assert reply == f"421 4.7.0 Too many connections from {UNTRUSTED}, try again later"
        assert await extra.closed()
        await extra.close()
        # Another address is not held back by this one's connections.
        other, greeting = await connect(ingest.port, "127.0.0.3")
        assert greeting.startswith("220 ")
        await other.close()
        await clients[0].cmd("QUIT")
        await eventually(
            lambda: ingest.registry.counts.by_ip[UNTRUSTED] == 2, within=5, what="one closed"
        )
        again, greeting = await connect(ingest.port, UNTRUSTED)
        assert greeting.startswith("220 ")
        await again.close()
    await eventually(lambda: ingest.registry.counts.total == 0, within=5, what="all closed")


async def test_trusted_network_has_no_per_ip_cap_but_the_global_cap_holds(
    ingest: IngestService,
) -> None:
    async with connections(ingest.port, 8, "127.0.0.1"):
        extra, reply = await connect(ingest.port, "127.0.0.1")
        assert reply == "421 4.3.2 Too many connections, try again later"
        assert await extra.closed()
        await extra.close()
    await eventually(lambda: ingest.registry.counts.total == 0, within=5, what="all closed")


async def run_until_closed(client: RawClient, lines: list[str], times: int) -> list[str]:
    """Send `lines` up to `times` times, stopping at the first reply that is not 2xx."""
    for i in range(times):
        for line in lines:
            reply = await client.cmd(line)
            if not reply.startswith("2"):
                return [str(i), reply]
    return [str(times), "no 421"]


@pytest.mark.parametrize("command", ["NOOP", "RSET", "VRFY <a@b.test>", "HELP"])
async def test_junk_commands_end_with_421(ingest: IngestService, command: str) -> None:
    client, _ = await connect(ingest.port)
    try:
        assert (await client.cmd("EHLO client.test")).startswith("250")
        rounds, reply = await run_until_closed(client, [command], 1000)
        assert reply == "421 4.7.0 Too many commands without mail on this connection, closing"
        assert int(rounds) == 100
        assert await client.closed()
    finally:
        await client.close()


@pytest.mark.parametrize("abort", ["RSET", "EHLO client.test"])
async def test_aborted_transactions_end_with_421(ingest: IngestService, abort: str) -> None:
    client, _ = await connect(ingest.port)
    try:
        assert (await client.cmd("EHLO client.test")).startswith("250")
        rounds, reply = await run_until_closed(client, ["MAIL FROM:<s@client.test>", abort], 500)
        assert reply.startswith("421 4.7.0 Too many "), reply
        assert int(rounds) <= 100
        assert await client.closed()
    finally:
        await client.close()


async def send_message(client: RawClient, domain: str, body: bytes, size: int = 0) -> str:
    option = f" SIZE={size}" if size else ""
    assert (await client.cmd(f"MAIL FROM:<s@client.test>{option}")).startswith("250")
    assert (await client.cmd(f"RCPT TO:<r@{domain}>")).startswith("250")
    assert (await client.cmd("DATA")).startswith("354")
    await client.send(body + b".\r\n")
    return await client.reply()


async def test_junk_count_restarts_after_a_message(ingest: IngestService, domain: str) -> None:
    """An MTA that sends RSET between messages is never cut off while it delivers."""
    client, _ = await connect(ingest.port)
    try:
        assert (await client.cmd("EHLO client.test")).startswith("250")
        for _ in range(3):
            for _ in range(90):
                assert (await client.cmd("RSET")).startswith("250")
            reply = await send_message(client, domain, b"Subject: x\r\n\r\nbody\r\n")
            assert reply.startswith("250 2.0.0 Ok: queued as "), reply
    finally:
        await client.close()


async def test_bare_lf_body_that_doubles_gets_552_not_451(
    ingest: IngestService, domain: str
) -> None:
    """Within SIZE as sent, twice the maximum once every bare LF is CRLF: never fits, so 552."""
    line = b"\n" * 500 + b"\r\n"
    body = b"Subject: lf\r\n\r\n" + line * ((MAX_SIZE - 100) // len(line))
    assert len(body) <= MAX_SIZE
    client, _ = await connect(ingest.port)
    try:
        assert (await client.cmd("EHLO client.test")).startswith("250")
        reply = await send_message(client, domain, body, size=len(body))
        assert reply == "552 5.3.4 Message too big once line ends are CRLF"
        # The same size with CRLF line ends is queued.
        crlf = b"Subject: crlf\r\n\r\n" + (b"x" * 500 + b"\r\n") * ((MAX_SIZE - 2000) // 502)
        reply = await send_message(client, domain, crlf, size=len(crlf))
        assert reply.startswith("250 2.0.0 Ok: queued as "), reply
    finally:
        await client.close()


async def test_data_budget(ingest: IngestService, domain: str) -> None:
    """The budget holds one maximum-size transfer: a second DATA waits for it and then gets
    250; a MAIL whose SIZE could not be had even after the waiting one gets 452 4.3.1."""
    holder, _ = await connect(ingest.port)
    waiter, _ = await connect(ingest.port)
    late, _ = await connect(ingest.port)
    try:
        for client in (holder, waiter, late):
            assert (await client.cmd("EHLO client.test")).startswith("250")
        for client in (holder, waiter):
            assert (await client.cmd(f"MAIL FROM:<s@client.test> SIZE={MAX_SIZE}")).startswith(
                "250"
            )
            assert (await client.cmd(f"RCPT TO:<r@{domain}>")).startswith("250")
        assert (await holder.cmd("DATA")).startswith("354")
        await waiter.send(b"DATA\r\n")
        await eventually(
            lambda: ingest.registry.budget.queue_fits(1) is False, within=5, what="DATA waiting"
        )
        reply = await late.cmd("MAIL FROM:<s@client.test> SIZE=1000")
        assert reply == "452 4.3.1 Insufficient system storage, try again later"
        await holder.send(b"Subject: a\r\n\r\nbody\r\n.\r\n")
        assert (await holder.reply()).startswith("250 2.0.0 Ok: queued as ")
        assert (await waiter.reply()).startswith("354")
        await waiter.send(b"Subject: b\r\n\r\nbody\r\n.\r\n")
        assert (await waiter.reply()).startswith("250 2.0.0 Ok: queued as ")
        assert ingest.registry.budget.used == 0
    finally:
        for client in (holder, waiter, late):
            await client.close()


async def open_transfer(port: int, domain: str) -> RawClient:
    """A connection past its 354, with no SIZE declared."""
    client, _ = await connect(port)
    for line in ("EHLO client.test", "MAIL FROM:<s@client.test>", f"RCPT TO:<r@{domain}>"):
        assert (await client.cmd(line)).startswith("250")
    assert (await client.cmd("DATA")).startswith("354")
    return client


def lines(count: int) -> bytes:
    """`count` lines of 1,000 bytes each (with CRLF)."""
    return (b"x" * 998 + b"\r\n") * count


async def test_a_transfer_without_size_reserves_as_its_bytes_arrive(
    ingest: IngestService, domain: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No SIZE: each transfer reserves a step before its 354 and more as data arrives, so two
    start at once where the maximum each would have left room for one; the second waits for
    the budget the first holds once its bytes outgrow the rest, then gets 250."""
    monkeypatch.setattr(caps, "DATA_STEP", 4096)
    budget = ingest.registry.budget
    first = await open_transfer(ingest.port, domain)
    second = await open_transfer(ingest.port, domain)
    try:
        assert budget.used == 2 * 4096
        await first.send(b"Subject: a\r\n\r\n" + lines(40))
        await eventually(lambda: budget.used >= 40_000, within=5, what="the first's bytes held")
        await second.send(b"Subject: b\r\n\r\n" + lines(30) + b".\r\n")
        await eventually(lambda: len(budget._waiters) == 1, within=5, what="the second waiting")
        await first.send(b".\r\n")
        assert (await first.reply()).startswith("250 2.0.0 Ok: queued as ")
        assert (await second.reply()).startswith("250 2.0.0 Ok: queued as ")
        assert budget.used == 0
    finally:
        await first.close()
        await second.close()


async def test_a_transfer_that_waits_too_long_for_the_budget_gets_421(
    ingest: IngestService, domain: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(caps, "DATA_STEP", 4096)
    monkeypatch.setattr(ingest.registry, "budget_wait_s", 0.2)
    budget = ingest.registry.budget
    first = await open_transfer(ingest.port, domain)
    second = await open_transfer(ingest.port, domain)
    try:
        await first.send(b"Subject: a\r\n\r\n" + lines(50))
        await eventually(lambda: budget.used >= 50_000, within=5, what="the first's bytes held")
        await second.send(b"Subject: b\r\n\r\n" + lines(30) + b".\r\n")
        assert await second.reply() == "421 4.3.1 Insufficient system storage, closing"
        assert await second.closed()
        await first.send(b".\r\n")
        assert (await first.reply()).startswith("250 2.0.0 Ok: queued as ")
        assert budget.used == 0
    finally:
        await first.close()
        await second.close()
