"""A real Prometheus (Debian's package) scrapes the running pipeline — `mailsluice ingest`,
`mailsluice delivery` with its retry mover, fake MX servers that defer and bounce — while real
mail flows through it; then every dashboard panel query and every alert expression is evaluated
through Prometheus' HTTP API: each must parse, and each panel must return data.

(The committed previews in docs/dashboards/ are drawn from neutral sample data by
`scripts/render_dashboards.py --samples`, so no test pool name reaches them.)
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
import smtplib
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from support.eventually import eventually
from support.fake_mx import free_port
from support.paths import REPO
from support.processes import get, product_env, start, stop, tails
from support.prometheus import check_alerts, check_panels, query, start_prometheus

from mailsluice.observability.dashboards import build

ROOT = REPO
VENV_BIN = Path(sys.executable).parent
# Operator metrics come from the kopf operator, which needs a Kubernetes API server; its
# panels are checked for parsing here, and for data in tests/operator/test_prometheus.py.
NEEDS_OPERATOR = "mailsluice_operator_"
# The HTTP API's and the webhook sender's: checked for data in tests/api/test_prometheus.py.
NEEDS_API = ("mailsluice_api_", "mailsluice_webhooks_")
# The stream processors' engagement counts: checked for data in
# tests/streams/test_engagement_kafka.py, which runs `mailsluice streams` and puts opens and clicks
# on the events topic.
NEEDS_STREAMS = "mailsluice_streams_"
# Exported by the shaping runtime; while `mailsluice delivery` does not run it yet (the delivery
# worker's /metrics has no sample of them), their panels are checked for parsing only.
SHAPING = ("mailsluice_shaping_", "mailsluice_warmup_")
TRAFFIC_S = 25.0


def _send_batch(port: int, n: int, pool: str) -> int:
    """n messages with ok/tempfail/permfail recipients at a provider and at an other domain, and one
    recipient whose domain does not exist (rejected at RCPT). Returns messages accepted."""
    queued = 0
    for i in range(n):
        msg = EmailMessage()
        msg["From"] = "sender@origin.example"
        msg["To"] = "list@example.net"
        msg["Subject"] = f"observability {i}"
        msg["X-Mailsluice-Pool"] = pool
        msg.set_content("hello\n" * 20)
        rcpts = [f"ok{i}@gmail.com", f"ok{i}@example.net", f"user{i}@nx.example"]
        if i % 3 == 0:
            rcpts += [f"tempfail+{i}@gmail.com", f"permfail+{i}@example.net"]
        if i % 4 == 0:
            rcpts += [f"permfail+{i}@gmail.com", f"tempfail+{i}@example.net"]
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.ehlo("client.test")
            client.mail("sender@origin.example")
            accepted = [r for r in rcpts if client.rcpt(r)[0] == 250]
            if accepted and client.data(msg.as_bytes())[0] == 250:
                queued += 1
    return queued


async def test_dashboards_and_alerts_against_real_prometheus(
    kafka: Any, fake_mx: Any, dns_server: Any, tmp_path: Path
) -> None:
    pool = "obs" + uuid.uuid4().hex[:6]
    mx = fake_mx()
    for domain in ("gmail.com", "example.net", "origin.example"):
        dns_server.set_mx(domain, [(10, f"mx.{domain}")])
    dns_server.set_nxdomain("nx.example")
    smtp_port, ingest_http, delivery_http, prom_port = (free_port() for _ in range(4))
    logs = [tmp_path / n for n in ("ingest.log", "delivery.log", "prometheus.log")]
    ingest_env = product_env(
        kafka.bootstrap,
        MAILSLUICE_INGEST_LISTEN_PORT=str(smtp_port),
        MAILSLUICE_INGEST_HTTP_PORT=str(ingest_http),
        MAILSLUICE_INGEST_HOSTNAME="ingest.test",
        MAILSLUICE_INGEST_GREET_PAUSE_S="0",
        MAILSLUICE_INGEST_TRUSTED_POOLS=pool,
        MAILSLUICE_INGEST_DEFAULT_POOL=pool,
        MAILSLUICE_DNS_NAMESERVERS=dns_server.nameserver,
        MAILSLUICE_KAFKA_QUEUE_PARTITIONS="2",
    )
    today = dt.datetime.now(dt.UTC).date().isoformat()
    warmup = {"schedule": "custom", "start": today, "table": {"1": 100000}}
    delivery_env = product_env(
        kafka.bootstrap,
        MAILSLUICE_DELIVERY_POOL=pool,
        MAILSLUICE_DELIVERY_HTTP_PORT=str(delivery_http),
        MAILSLUICE_DELIVERY_COMMIT_INTERVAL_S="0.5",
        MAILSLUICE_DELIVERY_RETRY_BASE_S="1",
        MAILSLUICE_DELIVERY_RETRY_MAX_S="2",
        MAILSLUICE_DELIVERY_EXPIRY_S="8",
        MAILSLUICE_OUTBOUND_STATIC_ROUTES=f"*={mx.address}",
        MAILSLUICE_DNS_NAMESERVERS=dns_server.nameserver,
        MAILSLUICE_KAFKA_QUEUE_PARTITIONS="2",
        MAILSLUICE_SHAPING_STATUS_INTERVAL_S="1",
        MAILSLUICE_SHAPING_POOL_OVERRIDES=json.dumps({"warmup": warmup}),
    )
    prom = f"http://127.0.0.1:{prom_port}"
    procs: list[subprocess.Popen[bytes]] = []

    def answers(url: str) -> Callable[[], bool]:
        return lambda: get(url)[0] == 200

    # Each check blocks (HTTP, PromQL); a failure shows the processes' logs.
    watched = functools.partial(eventually, detail=lambda: tails(logs), blocking=True)

    try:
        procs.append(start([str(VENV_BIN / "mailsluice"), "ingest"], ingest_env, logs[0]))
        await watched(
            answers(f"http://127.0.0.1:{ingest_http}/readyz"),
            within=30,
            what="ingest ready",
        )
        procs.append(start([str(VENV_BIN / "mailsluice"), "delivery"], delivery_env, logs[1]))
        procs.append(
            start_prometheus(
                tmp_path, prom_port, {"ingest": ingest_http, "delivery": delivery_http}, logs[2]
            )
        )
        await watched(
            answers(f"http://127.0.0.1:{delivery_http}/readyz"),
            within=40,
            what="delivery ready",
        )
        await watched(
            answers(f"{prom}/-/ready"),
            within=30,
            what="prometheus ready",
        )
        started = time.time()
        queued = 0
        while time.time() - started < TRAFFIC_S:
            queued += await asyncio.to_thread(_send_batch, smtp_port, 4, pool)
            # The traffic's shape: batches spread over the run, so rates have points.
            await asyncio.sleep(0.5)
        assert queued > 20

        def outcomes_scraped() -> bool:
            return all(
                query(
                    prom,
                    f'sum(mailsluice_delivery_recipients_total{{pool="{pool}",result="{r}"}})',
                )["data"]["result"]
                for r in ("delivered", "deferred", "bounced")
            )

        # Deliveries, deferrals (retried, then expired) and bounces have all been scraped.
        await watched(
            outcomes_scraped,
            within=30,
            what="outcomes scraped",
        )
        problems: list[str] = []

        def every_query_answers() -> int:
            found, checked = _check_queries(prom, _shaping_runs(delivery_http))
            problems[:] = found
            return 0 if found else checked

        checked = await eventually(
            every_query_answers,
            within=30,
            interval=1,
            blocking=True,
            what="every panel query and alert expression to answer",
            detail=lambda: "\n".join(problems),
        )
        assert checked > 40
        # The pipeline's own health: the queue drained and nothing fired that should not.
        lag = query(prom, f'sum(mailsluice_delivery_queue_lag_records{{pool="{pool}"}})')
        assert lag["data"]["result"], "queue lag not exported"
    finally:
        for proc in reversed(procs):
            stop(proc)


def _check_queries(prom: str, shaping_runs: bool) -> tuple[list[str], int]:
    """Evaluate every panel query and alert expression; (problems, queries evaluated)."""
    problems, checked = check_panels(
        prom, list(build.DASHBOARDS), lambda e: _exempt(e, shaping_runs)
    )
    alert_problems, alerts = check_alerts(prom)
    return problems + alert_problems, checked + alerts


def _shaping_runs(port: int) -> bool:
    _, body = get(f"http://127.0.0.1:{port}/metrics")
    return any(line.startswith("mailsluice_shaping_") for line in body.decode().splitlines())


def _exempt(exprs: list[str], shaping_runs: bool) -> bool:
    if all(NEEDS_OPERATOR in e for e in exprs):
        return True
    if all(any(m in e for m in NEEDS_API) for e in exprs):
        return True
    if all(NEEDS_STREAMS in e for e in exprs):
        return True
    return not shaping_runs and all(any(m in e for m in SHAPING) for e in exprs)
