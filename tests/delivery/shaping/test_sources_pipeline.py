"""Two source addresses of a pool in the running pipeline: real Kafka, the real delivery worker
with its SMTP transport bound to two 127.0.0.x addresses, into the provider simulator, which
counts per source IP. One address is blocked by the provider: the other carries the mail, and
the blocked one does not connect again while its block lasts. Wall time, so one short run;
test_lanes.py proves the same on a simulated clock."""

from __future__ import annotations

import os

import pytest
from support.delivery_worker import Running, enqueue, envelope, service_for
from support.provider_model import ProviderLimits
from support.provider_sim import ProviderSim, ProviderSpec
from support.transport import settings as outbound_settings

from mailsluice.contracts.envelope import Envelope
from mailsluice.delivery.service import make_transport
from mailsluice.delivery.shaping.controller_tuning import TUNING
from mailsluice.delivery.shaping.engine import PolicyShaper
from mailsluice.kafka.admin import ensure_topics, standard_topics
from mailsluice.policy.shaping import load_policy_text
from mailsluice.resolver import DnsSettings

pytestmark = pytest.mark.integration

A, B = "127.0.0.71", "127.0.0.72"
DOMAIN = "isp.example"
MESSAGES = 30
# A start hint that lets the run finish in seconds: 3/s per address from the first send.
POLICY = f"""
[defaults]
connection_limit = 4
max_message_rate = "100/s"
max_deliveries_per_connection = 50
max_recipients_per_transaction = 100
tls = "opportunistic"

[domain."{DOMAIN}"]
start_rate = "180/min"
"""
NO_DNS = DnsSettings(nameservers="127.0.0.1:9", timeout_s=0.5)


async def test_a_blocked_address_leaves_the_other_sending(kafka) -> None:
    ks = kafka.settings(queue_partitions=1)
    pool = "t" + os.urandom(4).hex()
    await ensure_topics(ks, standard_topics(ks, [pool], 1024 * 1024))
    limits = ProviderLimits(rate_per_min=600, burst=20, connections=4, per_connection=50)
    with ProviderSim([ProviderSpec("isp", limits)]) as sim:
        isp = sim.server("isp")
        isp.block(A, seconds=TUNING.block_initial * 10)  # longer than the whole run
        outbound = outbound_settings(
            static_routes=f"{DOMAIN}={isp.address}", source_addresses=f"{A},{B}"
        )
        shaper = PolicyShaper(load_policy_text(POLICY), pool, sources=(A, B))
        transport = make_transport(NO_DNS, shaper, outbound)
        envs: list[Envelope | None] = [
            envelope(pool, n, (f"r{n}@{DOMAIN}",), stream="bulk") for n in range(MESSAGES)
        ]
        async with Running(service_for(ks, pool, transport, shaper)):
            await enqueue(ks, envs)
            accepted = await sim.accepted_arrived(MESSAGES, within=60)
            state = {lane.source: lane.steering.state for lane in shaper.lanes.peek(DOMAIN)}
        refused = [r for r in sim.refusals if r.source == A]
    assert sorted(a.recipient for a in accepted) == sorted(
        f"r{n}@{DOMAIN}" for n in range(MESSAGES)
    )
    assert {a.source for a in accepted} == {B}
    # A met the block once (at its greeting) and never connected again during it
    assert [(r.phase, r.kind) for r in refused] == [("connect", "block")]
    assert state[A] == "blocked"
