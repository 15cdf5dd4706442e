"""The fault run in the suite (issue 12): a seeded, bounded version of `make chaos` against the
session broker. Mail goes over SMTP into a real `mailsluice ingest` while two real delivery
workers deliver it to a counting MX; meanwhile worker 0 is SIGKILLed twice, the broker is stopped
gracefully for longer than ingest's publish timeout and started again, ingest is SIGKILLed and
worker 1 gets a SIGTERM, each restarted at once (scripts/chaos.py, scripts/chaos_plan.py).
The client sends mail answered 451 again, the same bytes, as an MTA does. Nothing that got a 250
may be lost, duplicates stay under 0.5% of accepted, a message sent again reaches its recipient
once, nothing refused for good is delivered, every worker is back (alive, ready, live and
delivering) and the queue's lag is 0.
Wall time, marked integration.

This module stops and restarts the session's broker."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from support.scripts import script

chaos = script("chaos")
plan = script("chaos_plan")

pytestmark = pytest.mark.integration


def tails(work: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(work.glob("*.log")))


async def test_the_fault_run_loses_nothing_and_every_worker_comes_back(
    kafka: Any, tmp_path: Path
) -> None:
    config = plan.SUITE
    fig, details = await chaos.fault_run(config, kafka, tmp_path)
    result = chaos.report(fig, config, details)
    logs = await asyncio.to_thread(tails, tmp_path)
    assert fig.faults == len(plan.schedule(config)), details
    assert fig.retried > 0, "no 451 during the broker outage: the outage was too short"
    assert fig.lost == 0, logs
    assert fig.duplicate_pct < plan.MAX_DUPLICATE_PCT, result
    assert fig.retried_duplicates == 0, result
    assert fig.delivered_after_451 == 0, result
    assert fig.unexpected == 0
    assert fig.workers_back == fig.workers == 2, details["workers_check"]
    assert fig.queue_lag == 0 and fig.drain_s is not None, result
    assert result["problems"] == []


class OneOfThree:
    """The broker fault of the run on a three-broker cluster: one node stopped gracefully and
    started again (the others keep two replicas in sync), the rest of the run as above."""

    def __init__(self, cluster: Any, node: int) -> None:
        self.cluster, self.node = cluster, node

    @property
    def bootstrap(self) -> str:
        return str(self.cluster.bootstrap)

    def stop(self) -> None:
        self.cluster.stop_node(self.node)

    def start(self) -> None:
        self.cluster.start_nodes(self.node)


async def test_on_three_brokers_one_stopped_loses_nothing_and_refuses_little(
    kafka_cluster: Any, tmp_path: Path
) -> None:
    config = plan.SUITE
    replication = {
        "MAILSLUICE_KAFKA_REPLICATION_FACTOR": "3",
        "MAILSLUICE_KAFKA_MIN_INSYNC_REPLICAS": "2",
    }
    fig, details = await chaos.fault_run(
        config, OneOfThree(kafka_cluster, 1), tmp_path, replication
    )
    result = chaos.report(fig, config, details)
    logs = await asyncio.to_thread(tails, tmp_path)
    assert fig.lost == 0, logs
    assert fig.duplicate_pct < plan.MAX_DUPLICATE_PCT, result
    assert fig.retried_duplicates == 0, result
    assert fig.delivered_after_451 == 0, result
    assert fig.workers_back == fig.workers == 2, details["workers_check"]
    assert fig.queue_lag == 0 and fig.drain_s is not None, result
    # the single broker run refuses mail for the whole outage; one of three down, at most a
    # leader election's worth (ingest's SIGKILL refuses none: the client reconnects)
    assert fig.retried < 0.05 * fig.accepted, result
