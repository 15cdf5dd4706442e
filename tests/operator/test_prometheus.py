"""The Operator dashboard against a real Prometheus (Debian's package).

`mailsluice operator` runs as a process against the real kube-apiserver (tests/support/
k8s_cluster) and the real Kafka broker, with two SendingPools; `mailsluice delivery` runs for one
of them, standing in for the worker pod the operator's Deployment would start (there is no
kubelet), and delivers a trickle of queue records to a fake MX. The other pool gets a backlog
and no worker, so the operator wants more workers there than are ready. Prometheus scrapes
the operator's /metrics port and the worker's; one reconcile error is provoked by making the API
server unreachable for the operator's own client for a moment.
Then every Operator dashboard panel query is evaluated through Prometheus' HTTP API: each must
parse and return data.

(The committed preview, docs/dashboards/operator.png, is drawn from neutral sample data by
`scripts/render_dashboards.py --samples`, so no test pool name reaches it.)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import yaml
from support.delivery_worker import enqueue, envelope
from support.eventually import eventually
from support.fake_mx import free_port
from support.k8s_cluster import K8sCluster
from support.k8s_fixtures import apply_crd, get_json, write_kubeconfig
from support.kafka_broker import KafkaBroker
from support.operator_cluster import apply_yaml, pool_yaml, pretend_workers_ready
from support.processes import get, product_env, start, stop, tails
from support.prometheus import check_alerts, check_panels, query, start_prometheus

from mailsluice.contracts.envelope import Envelope
from mailsluice.observability.dashboards import build

NS = "op-prom"
VENV_BIN = Path(sys.executable).parent
RUN_S = 30.0


def _write_kubeconfig(path: Path, cluster: K8sCluster, server: str) -> None:
    """A kubeconfig for user admin at `server` (the operator re-reads it for every round)."""
    write_kubeconfig(path, server, {"token": cluster.token})


def _sum(prom: str, expr: str) -> float:
    result = query(prom, expr).get("data", {}).get("result") or []
    return sum(float(r["value"][1]) for r in result)


async def _produce(
    kafka: KafkaBroker, pool: str, n: int, *, burst: int = 0, every_s: float = 0.0
) -> None:
    """n queue records for one recipient each at the fake MX's domain, in bursts every_s apart."""
    size = burst or n
    for first in range(0, n, size):
        if first:
            await asyncio.sleep(every_s)  # the traffic's shape: bursts every_s apart
        envs: list[Envelope | None] = [
            envelope(pool, i, (f"ok{i}@example.net",)) for i in range(first, min(first + size, n))
        ]
        await enqueue(kafka.settings(), envs, b"Subject: operator dashboard\r\n\r\nhello\r\n")


async def test_operator_dashboard_against_real_prometheus(
    cluster: K8sCluster, kafka: KafkaBroker, fake_mx: Any, dns_server: Any, tmp_path: Path
) -> None:
    apply_crd(cluster)
    if get_json(cluster, "namespace", NS) is None:
        cluster.kubectl("create", "namespace", NS)
    tag = uuid.uuid4().hex[:6]
    pools = [f"opm{tag}a", f"opm{tag}b"]
    metrics_port, health_port, worker_port, prom_port = (free_port() for _ in range(4))
    kubeconfig = tmp_path / "kubeconfig"
    _write_kubeconfig(kubeconfig, cluster, cluster.server)
    logs = [tmp_path / n for n in ("operator.log", "delivery.log", "prometheus.log")]
    operator_env = product_env(
        kafka.bootstrap,
        KUBECONFIG=str(kubeconfig),
        MAILSLUICE_OPERATOR_METRICS_PORT=str(metrics_port),
        MAILSLUICE_OPERATOR_HEALTH_PORT=str(health_port),
        MAILSLUICE_OPERATOR_SCALE_INTERVAL_S="1",
    )
    worker_env = product_env(
        kafka.bootstrap,
        MAILSLUICE_DELIVERY_POOL=pools[0],
        MAILSLUICE_DELIVERY_HTTP_PORT=str(worker_port),
        MAILSLUICE_KAFKA_QUEUE_PARTITIONS="4",
        MAILSLUICE_OUTBOUND_STATIC_ROUTES=f"*={fake_mx().address}",
        MAILSLUICE_DNS_NAMESERVERS=dns_server.nameserver,
    )
    prom = f"http://127.0.0.1:{prom_port}"
    procs: list[subprocess.Popen[bytes]] = []
    # Each check blocks (HTTP, kubectl, PromQL); a failure shows the processes' logs.
    watched = functools.partial(eventually, detail=lambda: tails(logs), blocking=True)
    trickle: asyncio.Task[None] | None = None
    try:
        mailsluice = str(VENV_BIN / "mailsluice")
        procs.append(start([mailsluice, "operator", "--namespace", NS], operator_env, logs[0]))
        targets = {"operator": metrics_port, "delivery": worker_port}
        procs.append(start_prometheus(tmp_path, prom_port, targets, logs[2]))
        await watched(
            lambda: get(f"http://127.0.0.1:{health_port}/healthz")[0] == 200,
            within=60,
            what="operator /healthz",
        )
        started = time.time()
        for pool in pools:
            apply_yaml(cluster, pool_yaml(pool, NS))
        await watched(
            lambda: _reconciled(cluster, pools),
            within=60,
            what="pools reconciled",
        )
        # The operator created the first pool's topic; its worker joins the consumer group.
        procs.append(start([mailsluice, "delivery"], worker_env, logs[1]))
        await watched(
            lambda: get(f"http://127.0.0.1:{worker_port}/readyz")[0] == 200,
            within=60,
            what="worker ready",
        )
        pretend_workers_ready(cluster, pools[0], 1, NS)
        trickle = asyncio.create_task(_produce(kafka, pools[0], 300, burst=30, every_s=2))
        await _produce(kafka, pools[1], 40)  # 4 workers' worth of lag at lagPerWorker 10
        await watched(
            lambda: get(f"{prom}/-/ready")[0] == 200,
            within=30,
            what="prometheus ready",
        )
        await watched(
            lambda: (
                _sum(prom, 'sum(mailsluice_operator_workers{kind="desired"})') >= 1 + 4
                and _sum(prom, 'sum(mailsluice_operator_workers{kind="ready"})') >= 1
                and _sum(prom, "count(mailsluice_delivery_inflight_messages)") >= 1
            ),
            within=30,
            what="workers scraped",
        )
        await _provoke_reconcile_error(cluster, kubeconfig, prom, logs)
        # The run's length, not a wait for something: a few more rounds, so rates over the run
        # have points before and after the error.
        await asyncio.sleep(max(0.0, started + RUN_S - time.time()))

        _check_operator_dashboard(prom)
        for pool in pools:
            cluster.kubectl("delete", "sendingpool", pool, "-n", NS, "--wait=false")
        await watched(
            lambda: not _any_pool(cluster, pools),
            within=60,
            what="pools deleted",
        )
    finally:
        if trickle is not None:
            trickle.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await trickle
        for proc in reversed(procs):
            stop(proc)
    assert procs[0].returncode == 0, logs[0].read_text()[-3000:]


def _check_operator_dashboard(prom: str) -> None:
    problems, checked = check_panels(prom, ["operator"])
    alert_problems, alerts = check_alerts(prom, "mailsluice.operator")
    assert not problems + alert_problems, "\n".join(problems + alert_problems)
    assert checked >= 5 and alerts >= 2
    # Every process exports the reconcile counters at zero; these rounds are the operator's.
    assert _sum(prom, 'sum(mailsluice_operator_reconciles_total{job="operator"})') > 2
    # The failing-reconcile alert's expression sees the error (its `for` keeps it pending).
    failing = query(prom, _alert_expr("MailsluiceOperatorReconcileFailing"))
    assert failing["data"]["result"], failing


async def _provoke_reconcile_error(
    cluster: K8sCluster, kubeconfig: Path, prom: str, logs: list[Path]
) -> None:
    """Point the operator's own API client (it reads the kubeconfig for every round) at a port
    where nothing listens: its rounds raise, as during an API server outage, and are counted as
    errors; kopf's watch keeps its connection. Then restore the kubeconfig; kopf retries the
    failed rounds after the scale interval."""
    dead = f"127.0.0.1:{free_port()}"
    _write_kubeconfig(kubeconfig, cluster, f"https://{dead}")
    try:
        await eventually(
            lambda: _sum(prom, 'sum(mailsluice_operator_reconciles_total{result="error"})') > 0,
            within=60,
            what="a reconcile error scraped",
            detail=lambda: tails(logs),
            blocking=True,
        )
        # ... and it is this outage the operator logged, not something else.
        assert f"Cannot connect to host {dead}" in logs[0].read_text(), logs[0].read_text()[-3000:]
    finally:
        _write_kubeconfig(kubeconfig, cluster, cluster.server)


def _reconciled(cluster: K8sCluster, pools: list[str]) -> bool:
    for pool in pools:
        body = get_json(cluster, "sendingpool", pool, "-n", NS)
        if not body or (body.get("status") or {}).get("partitions") != 4:
            return False
    return True


def _any_pool(cluster: K8sCluster, pools: list[str]) -> bool:
    return any(get_json(cluster, "sendingpool", pool, "-n", NS) for pool in pools)


def _alert_expr(name: str) -> str:
    rules = yaml.safe_load((build.OUT_DIR.parent / "rules" / "mailsluice.rules.yaml").read_text())
    return next(r["expr"] for g in rules["groups"] for r in g["rules"] if r.get("alert") == name)
