"""Every SendingPool field reaches the worker it is meant for: the Deployment is rendered from a
pool, its container's environment (and its mounted Secrets, as files) is all the worker gets,
and the worker builds its settings and objects from that as `mailsluice delivery` does
(service.configure, service.shaping_runtime). Each test fails when the worker ignores its field.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.operator_pool import KAFKA, OP, POOL_BODY
from support.transport import envelope

from mailsluice.config import LogSettings, MailsluiceSettings
from mailsluice.consent.settings import UnsubscribeSettings
from mailsluice.contracts import topics
from mailsluice.delivery import service
from mailsluice.delivery.shaping.runtime import ShapingRuntime
from mailsluice.delivery.shaping.settings import ShapingSettings
from mailsluice.delivery.transport.settings import OutboundSettings
from mailsluice.delivery.worker.settings import DeliverySettings
from mailsluice.dkim.keys import generate, key_file_name
from mailsluice.dkim.settings import DkimSettings
from mailsluice.kafka.admin import standard_topics
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.policy.warmup import ALL
from mailsluice.resolver import DnsSettings
from mailsluice.tracking.settings import TrackingSettings
from mailsluice_operator import render, warmup
from mailsluice_operator.settings import OperatorSettings
from mailsluice_operator.spec import PoolSpec

# Everything the worker loads from its environment (service.configure); an operator-set
# variable none of these reads is one the worker ignores.
WORKER_SETTINGS: tuple[type[MailsluiceSettings], ...] = (
    DeliverySettings,
    KafkaSettings,
    LogSettings,
    DnsSettings,
    ShapingSettings,
    OutboundSettings,
    DkimSettings,
    UnsubscribeSettings,
    TrackingSettings,
)
# The operator with every optional service on, so every variable it can set is rendered.
FULL_OP = OP.model_copy(
    update={
        "tracking_url": "https://t.example.com",
        "tracking_keys_secret": "track-keys",
        "unsubscribe_url": "https://u.example.com",
        "unsubscribe_keys_secret": "unsub-keys",
    }
)
# A bulk message from a sender domain without a DKIM key of its own.
BULK = envelope("b@example.org", sender="a@customer.example", pool="bulk-a")
DKIM = {"secretName": "pool-dkim", "domain": "pool.example.net", "scheduleKey": "schedule.yaml"}


@dataclass
class Worker:
    """What a worker pod of the pool makes of its container."""

    configured: service.Configured
    runtime: ShapingRuntime


def _body(**spec: Any) -> dict[str, Any]:
    return {**POOL_BODY, "spec": {**POOL_BODY["spec"], **spec}}


def _mounted(
    pod: Mapping[str, Any], secrets: Mapping[str, Mapping[str, bytes]], tmp_path: Path
) -> dict[str, str]:
    """The kubelet's part: each Secret the pod mounts, its files written under tmp_path; mount
    path -> that directory. `secrets` holds each Secret's files by the Secret's name."""
    by_volume = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    dirs: dict[str, str] = {}
    for mount in pod["containers"][0]["volumeMounts"]:
        secret = by_volume.get(mount["name"])
        if secret is None or secret not in secrets:
            continue
        root = tmp_path / mount["name"]
        root.mkdir(parents=True, exist_ok=True)
        for key, content in secrets[secret].items():
            (root / key).write_bytes(content)
        dirs[mount["mountPath"]] = str(root)
    return dirs


def start_worker(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    body: Mapping[str, Any],
    op: OperatorSettings = OP,
    secrets: Mapping[str, Mapping[str, bytes]] | None = None,
) -> Worker:
    """Render the pool's Deployment, give its container's env and Secrets to the worker, and
    build the worker as `mailsluice delivery` does (no Kafka needed for that)."""
    pool = render.Pool.from_body(body)
    pod = render.render_deployment(pool, 1, KAFKA, op)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    dirs = _mounted(pod, secrets or {}, tmp_path)
    for name in list(os.environ):  # the pod's env is all it gets
        if name.startswith("MAILSLUICE_"):
            monkeypatch.delenv(name)
    for var in container["env"]:
        value = var.get("value", "delivery-pod-0")  # a fieldRef: the pod's name
        for mount_path, root in dirs.items():
            value = value.replace(mount_path, root)  # the mount's files, where the test put them
        monkeypatch.setenv(var["name"], value)
    parser = argparse.ArgumentParser()
    service.add_arguments(parser)
    assert container["args"][0] == "delivery"
    c = service.configure(parser.parse_args(container["args"][1:]))
    sources = tuple(c.outbound.source_addresses)
    return Worker(c, service.shaping_runtime(c.settings, c.kafka, c.shaping, sources))


def _noon(day: dt.date) -> float:
    return dt.datetime.combine(day, dt.time(12), dt.UTC).timestamp()


# --- shaping -----------------------------------------------------------------------------------


def test_a_shaping_rule_for_a_provider_holds_in_the_workers_shaper(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    plain = start_worker(monkeypatch, tmp_path, _body(shaping=[])).runtime.shaper
    rule = {"match": "google", "messagesPerSecond": 2.5, "maxConnections": 3}
    body = _body(shaping=[{**rule, "messagesPerConnection": 40}])
    shaper = start_worker(monkeypatch, tmp_path, body).runtime.shaper
    got, shipped = shaper.shaping("google"), plain.shaping("google")
    assert [r.per_second for r in got.message_rates] == [2.5]
    assert (got.connection_limit, got.max_deliveries_per_connection) == (3, 40)
    assert shaper.per_connection("google", "192.0.2.10") == 40
    # the shipped policy says otherwise, so an ignored rule fails the asserts above
    assert [r.per_second for r in shipped.message_rates] != [2.5]
    assert (shipped.connection_limit, shipped.max_deliveries_per_connection) != (3, 40)
    assert shaper.shaping("example.org") == plain.shaping("example.org")  # others as before


def test_a_shaping_rule_for_a_domain_holds_in_the_workers_shaper(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    rule = {"match": "Mail.Example.org", "messagesPerSecond": 0.5, "maxConnections": 1}
    shaper = start_worker(monkeypatch, tmp_path, _body(shaping=[rule])).runtime.shaper
    got = shaper.shaping("mail.example.org")
    assert [r.per_second for r in got.message_rates] == [0.5]
    assert got.connection_limit == 1
    assert shaper.shaping("other.example.org").connection_limit != 1


# --- warm-up -----------------------------------------------------------------------------------


def test_the_warmup_ramp_caps_each_source_address_of_the_worker(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    start = dt.date(2026, 11, 20)
    ramp = {"table": [{"day": 1, "volume": 7}, {"day": 2, "volume": 11}], "startDate": "2026-11-20"}
    body = _body(warmup={**ramp, "sources": [{"address": "192.0.2.11", "startDate": "2026-11-21"}]})
    pool_warmup = start_worker(monkeypatch, tmp_path, body).runtime.shaper.warmup
    assert pool_warmup is not None
    day2 = _noon(start + dt.timedelta(days=1))
    caps = {a: t.caps(None, day2)[ALL] for a, t in pool_warmup.trackers.items()}
    assert caps == {"192.0.2.10": 11, "192.0.2.11": 7}  # the second address is on its day 1
    # the cap the operator reports for that day is the one the worker keeps
    schedule = warmup.schedule(render.Pool.from_body(body).spec["warmup"])
    assert schedule is not None and schedule.daily(2) == 11


def test_a_warm_address_and_a_pool_without_warmup_send_uncapped(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    sources = [{"address": "192.0.2.11", "warm": True}]
    body = _body(warmup={"preset": "ses-45-day", "sources": sources})
    pool_warmup = start_worker(monkeypatch, tmp_path, body).runtime.shaper.warmup
    assert pool_warmup is not None and list(pool_warmup.trackers) == ["192.0.2.10"]
    none = start_worker(monkeypatch, tmp_path, _body(warmup={"preset": "none"}))
    assert none.runtime.shaper.warmup is None


# --- transport ---------------------------------------------------------------------------------


def test_the_worker_sends_from_the_pools_source_addresses(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    addresses = ["2001:db8::10", "192.0.2.12"]
    body = _body(sourceAddresses=addresses, warmup={"preset": "ses-45-day"})
    worker = start_worker(monkeypatch, tmp_path, body)
    assert list(worker.configured.outbound.source_addresses) == addresses
    warming = worker.runtime.shaper.warmup
    assert warming is not None and sorted(warming.trackers) == sorted(addresses)


def test_the_worker_says_the_pools_ehlo_name(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    worker = start_worker(monkeypatch, tmp_path, _body(ehloName="out7.mail.example.net"))
    assert worker.configured.outbound.ehlo_name == "out7.mail.example.net"


# --- DKIM --------------------------------------------------------------------------------------


def _dkim_secret(selectors: Mapping[str, str]) -> dict[str, bytes]:
    """A DKIM Secret: a key per selector of pool.example.net, and a rotation schedule naming
    when each starts to sign."""
    files = {
        key_file_name("pool.example.net", sel): generate(
            "pool.example.net", sel, "ed25519"
        ).private_pem()
        for sel in selectors
    }
    entries = "".join(
        f"    - selector: {sel}\n      active_from: '{when}'\n" for sel, when in selectors.items()
    )
    files["schedule.yaml"] = f"domains:\n  pool.example.net:\n{entries}".encode()
    return files


def test_the_pools_dkim_keys_domain_and_schedule_sign_the_workers_mail(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret = _dkim_secret({"old": "2020-01-01T00:00:00Z", "next": "2999-01-01T00:00:00Z"})
    body = _body(dkim=DKIM)
    worker = start_worker(monkeypatch, tmp_path, body, secrets={"pool-dkim": secret})
    sign = worker.configured.signer
    assert sign is not None
    message = b"From: a@customer.example\r\nSubject: hi\r\n\r\nbody\r\n"
    signed = sign(BULK, message)
    # the pool's domain signs mail whose From domain has no key, with the scheduled selector
    assert b"d=pool.example.net" in signed and b"s=old" in signed and b"s=next" not in signed
    unsigned = start_worker(monkeypatch, tmp_path, _body()).configured
    assert unsigned.signer is None


# --- tracking ----------------------------------------------------------------------------------


def test_the_pools_tracking_is_the_workers_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    keys = {"track-keys": {"t1": b"0123456789abcdef0123"}, "unsub-keys": {"u1": b"x" * 32}}
    choices = {}
    for tracking in ("clicks", None):
        body = _body(tracking=tracking) if tracking else _body()
        worker = start_worker(monkeypatch, tmp_path, body, FULL_OP, keys).configured
        assert worker.finish.tracking is not None
        choices[tracking] = worker.finish.tracking.choice(BULK)
    assert choices == {"clicks": "clicks", None: FULL_OP.tracking_default}
    assert FULL_OP.tracking_default != "clicks"


# --- the rest of the spec ----------------------------------------------------------------------


def test_the_worker_serves_its_pool_and_creates_its_topic_with_the_pools_partitions(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    worker = start_worker(monkeypatch, tmp_path, _body(partitions=7))
    c = worker.configured
    assert c.settings.pool == worker.runtime.pool == "bulk-a"
    specs = standard_topics(c.kafka, [c.settings.pool], c.settings.max_message_size)
    queue = [s for s in specs if s.name == topics.queue_topic("bulk-a")]
    assert [s.partitions for s in queue] == [7]


def test_the_templates_env_wins_in_the_workers_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env = [
        {"name": "MAILSLUICE_DELIVERY_MAX_INFLIGHT", "value": "77"},
        {"name": "MAILSLUICE_OUTBOUND_EHLO_NAME", "value": "override.example.net"},
    ]
    template = {**POOL_BODY["spec"]["workerTemplate"], "env": env}
    c = start_worker(monkeypatch, tmp_path, _body(workerTemplate=template)).configured
    assert c.settings.max_inflight == 77
    assert c.outbound.ehlo_name == "override.example.net"


# What carries each spec field; a new field fails here until it is given a path and a test.
CARRIED_BY = {
    "sourceAddresses": "MAILSLUICE_OUTBOUND_SOURCE_ADDRESSES",
    "ehloName": "MAILSLUICE_OUTBOUND_EHLO_NAME",
    "warmup": "MAILSLUICE_SHAPING_POOL_OVERRIDES",
    "shaping": "MAILSLUICE_SHAPING_POOL_OVERRIDES",
    "partitions": "MAILSLUICE_KAFKA_QUEUE_PARTITIONS",
    "dkim": "MAILSLUICE_DKIM_* and the Secret mounted",
    "tracking": "MAILSLUICE_TRACKING_DEFAULT",
    "workerTemplate": "the pod template (image, resources, env, nodeSelector, tolerations)",
    # the operator's own: how many workers run (Deployment replicas)
    "minWorkers": "operator",
    "maxWorkers": "operator",
    "lagPerWorker": "operator",
    "workerThroughput": "operator",
    "scaleDownStabilizationSeconds": "operator",
    "replicas": "operator",
}


def test_every_spec_field_has_a_path_to_the_worker_or_is_the_operators() -> None:
    fields = {f.alias or name for name, f in PoolSpec.model_fields.items()}
    assert fields == set(CARRIED_BY)


def test_the_operator_sets_only_variables_the_worker_reads() -> None:
    read = {
        f"{cls.model_config.get('env_prefix', '')}{name}".upper()
        for cls in WORKER_SETTINGS
        for name in cls.model_fields
    }
    pool = render.Pool.from_body(_body(dkim=DKIM, tracking="all"))
    env = render.worker_env(pool, KAFKA, FULL_OP)
    ignored = sorted(e["name"] for e in env if e["name"] not in read)
    assert ignored == []
    assert "MAILSLUICE_SHAPING_POOL_OVERRIDES" in {e["name"] for e in env}
