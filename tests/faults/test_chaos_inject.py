"""The fault run's client (scripts/chaos_inject.py) against a fake server on 127.0.0.1: what
it records for a 250, a 451 at the end of DATA (sent again, the same bytes), and a connection
closed before the reply; and that it gives up on a server that always hangs up before DATA.
No Kafka."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest
from support.eventually import eventually
from support.fake_mx import R451_DATA, free_port
from support.scripts import script

inject = script("chaos_inject")
plan = script("chaos_plan")

CONFIG = replace(
    plan.SUITE,
    messages=6,
    rate=1000.0,
    connections=2,
    destinations=3,
    client_retries=2,
    client_retry_s=0.01,
)


async def run(mx: Any, config: Any = CONFIG) -> Any:
    tally = plan.Tally()
    await inject.inject(config, mx.port, tally, asyncio.get_running_loop().time())
    return tally


def server(fake_mx: Any) -> Any:
    return fake_mx(host="127.0.0.1", port=free_port("127.0.0.1"))


async def test_250_is_accepted_and_each_recipient_is_sent_once(fake_mx: Any) -> None:
    mx = server(fake_mx)
    tally = await run(mx)
    assert len(tally.sent_to) == len(tally.accepted) == 6
    assert not tally.refused and not tally.unanswered
    received = sorted(r for m in mx.messages for r in m.rcpt_tos)
    assert received == sorted(tally.accepted)
    assert len({r.split("@")[1] for r in received}) == 3


async def test_a_451_at_the_end_of_data_is_refused_with_its_code(fake_mx: Any) -> None:
    mx = server(fake_mx)
    mx.script.data_reply = R451_DATA
    tally = await run(mx)
    assert tally.refused == dict.fromkeys(tally.sent_to, 451)
    assert len(tally.refused) == 6 and not tally.accepted
    assert tally.retried == tally.sent_to  # each sent again, twice, and refused again


async def test_a_message_answered_451_goes_again_and_its_last_answer_counts(fake_mx: Any) -> None:
    mx = server(fake_mx)
    mx.script.data_reply = R451_DATA
    tally = plan.Tally()
    config = replace(CONFIG, client_retry_s=2.0)
    loop = asyncio.get_running_loop()
    running = asyncio.create_task(inject.inject(config, mx.port, tally, loop.time()))
    await eventually(lambda: len(tally.refused) == 6, within=10, what="six answered 451")
    mx.script.data_reply = None  # the retries are accepted
    await running
    assert tally.accepted == tally.retried == tally.sent_to and not tally.refused
    assert sorted(r for m in mx.messages for r in m.rcpt_tos) == sorted(tally.sent_to)


async def test_a_connection_closed_after_the_message_is_unanswered(fake_mx: Any) -> None:
    mx = server(fake_mx)
    mx.script.drop_at = "dot"
    tally = await run(mx)
    assert tally.unanswered == tally.sent_to and len(tally.sent_to) == 6


async def test_a_server_that_always_hangs_up_before_data_stops_the_run(fake_mx: Any) -> None:
    mx = server(fake_mx)
    mx.script.drop_at = "mail"
    with pytest.raises(RuntimeError, match="before DATA"):
        await run(mx)
