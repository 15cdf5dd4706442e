"""Durability on a real three-broker cluster (3 replicas, min.insync.replicas 2, no unclean
leader election), as production runs it: a 250 from ingest means the message is on at least two
brokers' logs, so

- SIGKILLing the leader of the queue's partitions, one broker after another under load, loses
  nothing that got a 250, and mail goes on flowing while a broker is down;
- with two of three brokers down, ingest answers 451 (never 250) and mail flows again once
  they are back, again with nothing that got a 250 lost;
- a delivery worker goes on delivering when the leader of its queue partitions is SIGKILLed.

Every test leaves all three nodes running (a finally starts what it took down)."""

from __future__ import annotations

import asyncio
import time

import pytest
from support.delivery_worker import (
    EventLog,
    FakeTransport,
    Running,
    committed_to_end,
    enqueue,
    envelope,
    new_pool,
    service_for,
    setup_pool,
)
from support.dns_server import DnsServer
from support.eventually import eventually
from support.ingest import running_ingest, uid
from support.kafka_broker import kafka_local_cli
from support.kafka_cluster import KafkaCluster
from support.smtp_load import SmtpLoad, queued_recipients

from mailsluice.contracts.envelope import Envelope
from mailsluice.contracts.topics import EVENTS_TOPIC, queue_topic

QUEUE = queue_topic("default")
# what a publish writes to: the queue record and the events of the message
WRITTEN = (QUEUE, EVENTS_TOPIC)
PARTITIONS = 3
LOAD_CONNECTIONS = 4
LOAD_PER_S = 25.0


def _domain(dns_server: DnsServer) -> str:
    name = f"cluster-{uid()}.test"
    dns_server.set_mx(name, [(10, f"mx.{name}")])
    return name


def test_cli_status_shows_three_ready_nodes(kafka_cluster: KafkaCluster) -> None:
    out = kafka_local_cli("status", "--dir", str(kafka_cluster.directory))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 3
    for index, line in zip(kafka_cluster.indexes, lines, strict=True):
        assert line.startswith(f"node {index} 127.0.0.1:"), line
        assert line.endswith(f"pid={kafka_cluster.pid(index)} ready=yes"), line


async def test_sigkilled_leaders_lose_nothing_that_got_250(
    kafka_cluster: KafkaCluster, dns_server, dns_nameserver
) -> None:
    settings = kafka_cluster.settings(queue_partitions=PARTITIONS, request_timeout_ms=5000)
    domain = _domain(dns_server)
    rounds: list[str] = []
    killed: list[int] = []
    async with running_ingest(settings, dns_nameserver, publish_timeout_s=8.0) as service:
        await kafka_cluster.wait_in_sync(*WRITTEN)
        load = SmtpLoad(service.port, domain)
        try:
            async with load.running(LOAD_CONNECTIONS, LOAD_PER_S):
                await load.accepted_since(0.0, 50, within=30, what="50 messages before a fault")
                for _ in range(kafka_cluster.size):
                    # a broker leading queue partitions, each broker once while one is left
                    leaders = set((await kafka_cluster.leaders(QUEUE)).values())
                    victim = min(leaders - set(killed) or leaders)
                    killed.append(victim)
                    kafka_cluster.kill(victim)
                    down_at = time.monotonic()
                    await load.accepted_since(
                        down_at, 30, within=40, what=f"mail flowing with node {victim} killed"
                    )
                    flowing_at = time.monotonic()
                    await asyncio.to_thread(kafka_cluster.start_nodes, victim)
                    await kafka_cluster.wait_in_sync(*WRITTEN)
                    rounds.append(
                        f"node {victim}: 30 x 250 {flowing_at - down_at:.1f}s after the kill, "
                        f"back in sync {time.monotonic() - flowing_at:.1f}s after that"
                    )
        finally:
            await asyncio.to_thread(kafka_cluster.ensure_all_running)
    found = await queued_recipients(settings, domain)
    print("\nleaders SIGKILLed: " + "; ".join(rounds) + f"\n{load.summary(found)}")
    assert len(load.accepted) >= 50 + 30 * kafka_cluster.size
    assert sorted(load.accepted - set(found)) == []


@pytest.mark.parametrize("fault", ["stop", "kill"])
async def test_two_brokers_down_answers_451_then_mail_flows_again(
    kafka_cluster: KafkaCluster, dns_server, dns_nameserver, fault: str
) -> None:
    """Stopped, the two brokers hand over their leaderships and leave the ISRs, so the third
    is alone in sync and refuses writes; SIGKILLed, they take the controller quorum with them,
    nothing can be fenced, and writes wait for replicas that never answer. 451 either way."""
    settings = kafka_cluster.settings(queue_partitions=PARTITIONS, request_timeout_ms=5000)
    domain = _domain(dns_server)
    take_down = kafka_cluster.stop_node if fault == "stop" else kafka_cluster.kill
    async with running_ingest(settings, dns_nameserver, publish_timeout_s=5.0) as service:
        await kafka_cluster.wait_in_sync(*WRITTEN)
        load = SmtpLoad(service.port, domain)
        before = [await asyncio.to_thread(load.send_one) for _ in range(10)]
        assert [a.code for a in before] == [250] * 10
        try:
            for index in (2, 3):
                await asyncio.to_thread(take_down, index)
            outage = [await asyncio.to_thread(load.send_one) for _ in range(4)]
            assert [a.code for a in outage] == [451] * 4, load.counts()
            assert service.ready()[0] is False
        finally:
            back_at = time.monotonic()
            await asyncio.to_thread(kafka_cluster.start_nodes, 2, 3)
        flowing = await eventually(
            lambda: load.send_one().code == 250,
            within=60,
            interval=0.5,
            what="mail to flow again with the brokers back",
            blocking=True,
        )
        assert flowing
        flowed_after = time.monotonic() - back_at
        await kafka_cluster.wait_in_sync(*WRITTEN)
        after = [await asyncio.to_thread(load.send_one) for _ in range(10)]
        assert [a.code for a in after] == [250] * 10
        await eventually(lambda: service.ready()[0], within=10, what="ingest ready again")
    found = await queued_recipients(settings, domain)
    print(f"\n{fault}: {load.summary(found)}; flowing {flowed_after:.1f}s after the restart")
    assert {a.code for a in load.attempts} <= {250, 451}
    assert sorted(load.accepted - set(found)) == []


async def test_readiness_stays_failed_while_under_min_insync_replicas(
    kafka_cluster: KafkaCluster, dns_server, dns_nameserver
) -> None:
    settings = kafka_cluster.settings(queue_partitions=PARTITIONS, request_timeout_ms=5000)
    async with running_ingest(settings, dns_nameserver, publish_timeout_s=5.0) as service:
        await kafka_cluster.wait_in_sync(*WRITTEN)
        load = SmtpLoad(service.port, _domain(dns_server))
        assert (await asyncio.to_thread(load.send_one)).code == 250
        try:
            for index in (2, 3):
                await asyncio.to_thread(kafka_cluster.stop_node, index)
            assert (await asyncio.to_thread(load.send_one)).code == 451
            # the periodic health probe, run now rather than waited for
            await service.publisher.check()
            assert service.ready() == (False, "Kafka unreachable")
        finally:
            await asyncio.to_thread(kafka_cluster.start_nodes, 2, 3)
        # the health loop's probe write goes through once two replicas are in sync again
        await eventually(lambda: service.ready()[0], within=90, what="ready again")
        assert (await asyncio.to_thread(load.send_one)).code == 250


async def test_worker_keeps_delivering_through_a_leader_sigkill(
    kafka_cluster: KafkaCluster,
) -> None:
    ks = kafka_cluster.settings(queue_partitions=PARTITIONS, request_timeout_ms=5000)
    pool = new_pool()
    await setup_pool(ks, pool)
    transport = FakeTransport()

    def batch(first: int) -> list[Envelope]:
        return [envelope(pool, n, (f"r{n}@d{n % 5}.example",)) for n in range(first, first + 100)]

    before, during = batch(0), batch(100)
    keys = {(e.queue_id, e.recipients[0]) for e in before + during}
    async with EventLog(ks, pool) as events, Running(service_for(ks, pool, transport)):
        await kafka_cluster.wait_in_sync(queue_topic(pool))
        await enqueue(ks, list(before))
        await events.expect_final({(e.queue_id, e.recipients[0]) for e in before}, within=60)
        victim = (await kafka_cluster.leaders(queue_topic(pool)))[0]
        kafka_cluster.kill(victim)
        killed_at = time.monotonic()
        try:
            await enqueue(ks, list(during))
            await events.expect_final(keys, within=60)
            delivered_after = time.monotonic() - killed_at
        finally:
            await asyncio.to_thread(kafka_cluster.start_nodes, victim)
        await kafka_cluster.wait_in_sync(queue_topic(pool))
        await committed_to_end(ks, pool, within=60)
    finals = events.finals()
    print(
        f"\nworker: node {victim} SIGKILLed, all {len(keys)} delivered "
        f"{delivered_after:.1f}s after; transport calls {len(transport.calls)}, "
        f"final events repeated {sum(n > 1 for n in finals.values())}"
    )
    assert set(finals) == keys
