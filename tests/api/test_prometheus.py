"""A real Prometheus scrapes `mailsluice api` and `mailsluice webhooks` while a tenant sends
batches over HTTP (one of them again under its Idempotency-Key) and its webhook endpoint takes
the `processed` events: every panel of the "HTTP API and webhooks" dashboard returns data.
(tests/observability/test_prometheus_e2e.py checks the other dashboards with SMTP traffic.)"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from support.api import ACME_KEY, TENANTS, auth, message
from support.delivery_worker import new_pool, setup_pool
from support.eventually import eventually
from support.loopback import free_port
from support.processes import get, product_env, start, stop, tails
from support.prometheus import panels_with_data, start_prometheus
from support.webhook_receiver import Receiver

from mailsluice.kafka.settings import KafkaSettings

VENV_BIN = Path(sys.executable).parent


def post(url: str, body: dict[str, Any], **headers: str) -> int:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **auth(ACME_KEY), **headers},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return int(answer.status)


async def test_the_api_dashboard_against_real_prometheus(
    kafka: Any, kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    pool = new_pool()
    await setup_pool(kafka_settings, pool)
    receiver = await Receiver().start()
    secret = "whsec_" + base64.b64encode(b"p" * 32).decode()
    hook = {"id": "main", "url": receiver.url, "events": ["processed"], "secrets": [secret]}
    acme = {**TENANTS["acme"], "pools": [pool], "webhooks": [hook]}
    (tmp_path / "tenants.yaml").write_text(json.dumps({"tenants": {"acme": acme}}))
    public, api_ops, hooks_ops, prom_port = (free_port() for _ in range(4))
    logs = [tmp_path / n for n in ("api.log", "webhooks.log", "prometheus.log")]
    common = {"MAILSLUICE_TENANTS_FILE": str(tmp_path / "tenants.yaml")}
    api_env = product_env(
        kafka.bootstrap,
        **common,
        MAILSLUICE_API_LISTEN_HOST="127.0.0.1",
        MAILSLUICE_API_LISTEN_PORT=str(public),
        MAILSLUICE_API_HTTP_PORT=str(api_ops),
    )
    hooks_env = product_env(
        kafka.bootstrap,
        **common,
        MAILSLUICE_WEBHOOKS_HTTP_PORT=str(hooks_ops),
        MAILSLUICE_WEBHOOKS_ALLOW_NETWORKS="127.0.0.0/8",
        MAILSLUICE_WEBHOOKS_BATCH_MAX_WAIT_MS="100",
    )
    procs: list[subprocess.Popen[bytes]] = []

    def ready(port: int) -> bool:
        return get(f"http://127.0.0.1:{port}/readyz")[0] == 200

    try:
        procs.append(start([str(VENV_BIN / "mailsluice"), "webhooks"], hooks_env, logs[1]))
        procs.append(start([str(VENV_BIN / "mailsluice"), "api"], api_env, logs[0]))
        targets = {"api": api_ops, "webhooks": hooks_ops}
        procs.append(start_prometheus(tmp_path, prom_port, targets, logs[2]))
        for port, what in ((hooks_ops, "webhooks ready"), (api_ops, "api ready")):
            await eventually(
                lambda port=port: ready(port),
                within=60,
                what=what,
                blocking=True,
                detail=lambda: tails(logs),
            )
        url = f"http://127.0.0.1:{public}/v1/messages"
        key = uuid.uuid4().hex
        for n in range(4):
            assert post(url, message(20, campaign="obs")) == 202
            assert post(url, message(3), **{"Idempotency-Key": f"{key}-{n % 2}"}) == 202
        await eventually(
            lambda: len(receiver.received) > 0, within=60, what="a webhook batch delivered"
        )
        prom = f"http://127.0.0.1:{prom_port}"
        checked = await panels_with_data(prom, ["api"], lambda: tails(logs))
        assert checked >= 10
    finally:
        for proc in reversed(procs):
            stop(proc)
        await receiver.stop()
