"""caps.py's decisions on plain state: connection counts, junk and aborted counts, the byte
budget (FIFO, no real waiting: a zero timeout or a grant by give())."""

from __future__ import annotations

import asyncio

from mailsluice.ingest import caps
from mailsluice.ingest.caps import ByteBudget, Caps, ConnectionCounts, JunkCount

CAPS = Caps(per_ip=2, per_trusted_ip=0, total=3, junk_commands=2, aborted_transactions=1)


def test_connection_counts() -> None:
    counts = ConnectionCounts()
    assert counts.admit("10.0.0.1", trusted=False, caps=CAPS) is None
    assert counts.admit("10.0.0.1", trusted=False, caps=CAPS) is None
    refused = counts.admit("10.0.0.1", trusted=False, caps=CAPS)
    assert refused is not None and refused[1] == "per_ip" and "10.0.0.1" in refused[0]
    assert counts.admit("127.0.0.1", trusted=True, caps=CAPS) is None
    assert counts.admit("127.0.0.1", trusted=True, caps=CAPS) == (
        "421 4.3.2 Too many connections, try again later",
        "global",
    )
    counts.release("10.0.0.1")
    assert counts.admit("127.0.0.1", trusted=True, caps=CAPS) is None
    for ip in ("10.0.0.1", "127.0.0.1", "127.0.0.1"):
        counts.release(ip)
    assert counts.total == 0 and not counts.by_ip


def test_junk_and_aborted_counts_restart_after_a_message() -> None:
    count = JunkCount()
    assert caps.junk_command(count, CAPS) is None
    assert caps.junk_command(count, CAPS) is None
    assert caps.junk_command(count, CAPS) is not None
    count.aborted = 1
    assert caps.new_transaction(count, CAPS) is not None
    caps.queued(count)
    assert caps.junk_command(count, CAPS) is None
    assert caps.new_transaction(count, CAPS) is None


def test_reservation_and_declared_size() -> None:
    assert caps.declared_size(["BODY=8BITMIME", "SIZE=1234"]) == 1234
    assert caps.declared_size([]) is None
    assert caps.reservation(None, 100) == 100
    assert caps.reservation(5000, 100) == 100
    assert caps.reservation(10, 100) == 10
    assert caps.reservation(None, 10**8) == caps.DATA_STEP  # more as the bytes arrive


async def test_budget_serves_waiters_in_order() -> None:
    budget = ByteBudget(100)
    assert budget.try_take(80)
    assert not await budget.take(30, 0)  # does not fit and no time to wait
    big = asyncio.create_task(budget.take(50, 60))
    small = asyncio.create_task(budget.take(10, 60))
    await asyncio.sleep(0)  # one turn of the loop: both tasks queue (no time passes)
    assert len(budget._waiters) == 2
    assert not budget.try_take(10)  # 20 free, but waiters come first
    assert not budget.queue_fits(60)  # 50 + 10 waiting + 60 > 100
    budget.give(80)
    assert await big and await small
    assert budget.used == 60
    budget.give(60)
    assert budget.used == 0
