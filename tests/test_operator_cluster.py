"""The operator under kopf's KopfRunner against a real kube-apiserver and a real Kafka broker.

There is no controller-manager: Deployments get no pods and nothing garbage-collects. Where a
test needs ready workers it writes the Deployment's status itself, as the deployment controller
would; cleanup on delete is the operator's own delete handler.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import OffsetAndMetadata
from support.k8s_cluster import K8sCluster
from support.k8s_fixtures import (
    CHART,
    apply_crd,
    condition,
    get_json,
    running_operator,
    shared_cluster,
    stop_shared_cluster,
    wait_for,
)
from support.kafka_broker import KafkaBroker

from mailsluice import contracts
from mailsluice.config import KafkaSettings
from mailsluice.kafka import TopicSpec, ensure_topics, make_producer
from mailsluice_operator.handlers import build_registry
from mailsluice_operator.settings import OperatorSettings

pytestmark = pytest.mark.kafka

NS = "op-test"
NS_NO_KAFKA = "op-nokafka"


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[K8sCluster]:
    cluster = shared_cluster(tmp_path_factory)
    yield cluster
    stop_shared_cluster()


@pytest.fixture(scope="module")
def crd(cluster: K8sCluster) -> K8sCluster:
    apply_crd(cluster)
    for ns in (NS, NS_NO_KAFKA):
        if get_json(cluster, "namespace", ns) is None:
            cluster.kubectl("create", "namespace", ns)
    return cluster


@pytest.fixture(scope="module")
def operator(crd: K8sCluster, kafka: KafkaBroker) -> Iterator[None]:
    op = OperatorSettings(scale_interval_s=1.0, kafka_timeout_s=10.0, image="mailsluice:test")
    registry = build_registry(op, kafka.settings())
    with running_operator(NS, registry, crd.kubeconfig):
        yield


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pool_yaml(name: str, namespace: str = NS, **spec: Any) -> str:
    body = {
        "apiVersion": "mailsluice.io/v1alpha1",
        "kind": "SendingPool",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "ehloName": "mta.example.test",
            "sourceAddresses": ["192.0.2.10"],
            "partitions": 4,
            "minWorkers": 1,
            "maxWorkers": 4,
            "lagPerWorker": 10,
            "scaleDownStabilizationSeconds": 3,
            **spec,
        },
    }
    return json.dumps(body)


def _apply(cluster: K8sCluster, doc: str) -> None:
    cluster.kubectl("apply", "--server-side", "--field-manager=test", "-f", "-", input=doc)


def _pool(cluster: K8sCluster, name: str, ns: str = NS) -> dict[str, Any] | None:
    return get_json(cluster, "sendingpool", name, "-n", ns)


def _deployment(cluster: K8sCluster, pool: str, ns: str = NS) -> dict[str, Any] | None:
    return get_json(cluster, "deployment", f"mailsluice-delivery-{pool}", "-n", ns)


def _pretend_workers_ready(cluster: K8sCluster, pool: str, ready: int) -> None:
    """Write Deployment status as the (absent) deployment controller would."""
    dep = _deployment(cluster, pool)
    assert dep is not None
    status = {
        "observedGeneration": dep["metadata"]["generation"],
        "replicas": dep["spec"]["replicas"],
        "updatedReplicas": ready,
        "readyReplicas": ready,
        "availableReplicas": ready,
    }
    cluster.kubectl(
        "patch",
        "deployment",
        dep["metadata"]["name"],
        "-n",
        NS,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
    )


def _delete_pool(cluster: K8sCluster, name: str, ns: str) -> None:
    # Poll rather than `kubectl delete --timeout`: its watch-based wait proved flaky here.
    cluster.kubectl("delete", "sendingpool", name, "-n", ns, "--wait=false")
    try:
        wait_for(lambda: _pool(cluster, name, ns) is None, what=f"{name} gone")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {_pool(cluster, name, ns)}") from None


def _events(cluster: K8sCluster, ns: str, name: str) -> list[dict[str, Any]]:
    listed = get_json(cluster, "events", "-n", ns) or {}
    return [e for e in listed.get("items", []) if e["involvedObject"]["name"] == name]


async def _topic_partitions(kafka: KafkaBroker, topic: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
        return 0 if described["error_code"] else len(described["partitions"])
    finally:
        await admin.close()


def test_crd_is_established_and_refuses_invalid_specs(crd: K8sCluster) -> None:
    got = get_json(crd, "crd", "sendingpools.mailsluice.io")
    assert got is not None
    established = [c for c in got["status"]["conditions"] if c["type"] == "Established"]
    assert established[0]["status"] == "True"
    cases = {
        "minWorkers must not exceed maxWorkers": {"minWorkers": 3, "maxWorkers": 2},
        "maxWorkers must not exceed partitions": {"maxWorkers": 8},
        'Unsupported value: "fast"': {"stream": "fast"},
        'Unsupported value: "yolo"': {"warmup": {"preset": "yolo"}},
        "every source address is an IP": {"sourceAddresses": ["mta.example.test"]},
        "either a warm-up preset or a table": {
            "warmup": {"preset": "ses-45-day", "table": [{"day": 1, "volume": 10}]}
        },
    }
    for needle, spec in cases.items():
        proc = crd.kubectl("apply", "-f", "-", input=pool_yaml("refused", **spec), check=False)
        assert proc.returncode != 0 and needle in proc.stderr, (needle, proc.stderr)
    assert _pool(crd, "refused") is None
    # Defaults come from the schema.
    crd.kubectl("apply", "--dry-run=server", "-f", "-", input=pool_yaml("defaults"))


async def test_pool_gets_children_topic_and_ready_status(
    crd: K8sCluster, operator: None, kafka: KafkaBroker
) -> None:
    _apply(crd, pool_yaml("alpha", warmup={"preset": "none"}))
    dep = wait_for(lambda: _deployment(crd, "alpha"), what="Deployment")
    pool = _pool(crd, "alpha")
    assert pool is not None
    owner = dep["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"]) == (
        "SendingPool",
        "alpha",
        pool["metadata"]["uid"],
    )
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["delivery", "--pool", "alpha"]
    assert container["image"] == "mailsluice:test"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MAILSLUICE_KAFKA_BOOTSTRAP"] == kafka.bootstrap
    assert env["MAILSLUICE_DELIVERY_POOL"] == "alpha"
    assert env["MAILSLUICE_OUTBOUND_EHLO_NAME"] == "mta.example.test"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert dep["spec"]["replicas"] == 1
    cm = get_json(crd, "configmap", "mailsluice-pool-alpha", "-n", NS)
    assert cm is not None and "pool: alpha" in cm["data"]["policy.yaml"]
    pdb = get_json(crd, "pdb", "mailsluice-delivery-alpha", "-n", NS)
    assert pdb is not None and pdb["spec"]["maxUnavailable"] == 1
    assert await _topic_partitions(kafka, "mailsluice.queue.alpha") == 4

    # No pods without a controller-manager: the pool says so rather than claiming Ready.
    pool = wait_for(
        lambda: (
            (p := _pool(crd, "alpha"))
            and condition(p, "Ready").get("reason") == "NoWorkerReady"
            and p
        ),
        what="NoWorkerReady",
    )
    assert condition(pool, "Ready")["status"] == "False"
    _pretend_workers_ready(crd, "alpha", 1)
    pool = wait_for(
        lambda: (p := _pool(crd, "alpha")) and condition(p, "Ready").get("status") == "True" and p,
        what="Ready",
    )
    st = pool["status"]
    assert st["observedGeneration"] == pool["metadata"]["generation"]
    assert condition(pool, "Ready")["observedGeneration"] == pool["metadata"]["generation"]
    assert condition(pool, "Stalled")["status"] == "False"
    assert condition(pool, "Reconciling")["status"] == "False"
    assert (st["replicas"], st["readyReplicas"], st["lag"], st["partitions"]) == (1, 1, 0, 4)
    assert st["selector"] == (
        "app.kubernetes.io/component=delivery,app.kubernetes.io/name=mailsluice,"
        "mailsluice.io/pool=alpha"
    )
    columns = crd.kubectl("get", "spool", "alpha", "-n", NS).stdout.split()
    assert columns[:5] == ["NAME", "READY", "WORKERS", "LAG", "WARM-UP"]


def test_spec_change_rolls_the_workers(crd: K8sCluster, operator: None) -> None:
    before = wait_for(lambda: _deployment(crd, "alpha"), what="Deployment")
    old_hash = before["spec"]["template"]["metadata"]["annotations"]["mailsluice.io/spec-hash"]
    _apply(crd, pool_yaml("alpha", ehloName="mta2.example.test", warmup={"preset": "none"}))

    def rolled() -> dict[str, Any] | None:
        dep = _deployment(crd, "alpha")
        annotations = dep["spec"]["template"]["metadata"]["annotations"] if dep else {}
        return dep if annotations["mailsluice.io/spec-hash"] != old_hash else None

    dep = rolled_dep = wait_for(rolled, what="new spec hash")
    env = {
        e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["MAILSLUICE_OUTBOUND_EHLO_NAME"] == "mta2.example.test"
    assert rolled_dep["metadata"]["generation"] > before["metadata"]["generation"]
    cm = get_json(crd, "configmap", "mailsluice-pool-alpha", "-n", NS)
    assert cm is not None and "mta2.example.test" in cm["data"]["policy.yaml"]
    pool = wait_for(
        lambda: (
            (p := _pool(crd, "alpha"))
            and p["status"].get("observedGeneration") == p["metadata"]["generation"]
            and p
        ),
        what="observedGeneration",
    )
    assert pool["metadata"]["generation"] >= 2


async def test_lag_raises_replicas_and_draining_lowers_them(
    crd: K8sCluster, operator: None, kafka: KafkaBroker
) -> None:
    topic = "mailsluice.queue.alpha"
    producer = make_producer(kafka.settings(), max_message_size=1024, client_id="test")
    await producer.start()
    try:
        for i in range(35):
            await producer.send_and_wait(topic, b"x", key=f"dest{i % 7}".encode())
    finally:
        await producer.stop()

    def replicas(want: int, lag: int) -> dict[str, Any] | None:
        pool, dep = _pool(crd, "alpha"), _deployment(crd, "alpha")
        if not (pool and dep) or dep["spec"]["replicas"] != want:
            return None
        status = pool["status"]
        return pool if status.get("replicas") == want and status.get("lag") == lag else None

    # ceil(35 / 10) = 4 = partitions = max
    pool = await asyncio.to_thread(wait_for, lambda: replicas(4, 35), what="4 workers")
    assert "lag 35" in pool["status"]["lastScaleReason"]

    # Drain: the pool's consumer group commits the end of every partition.
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka.bootstrap,
        group_id="mailsluice.delivery.alpha",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(4)]
        ends = await consumer.end_offsets(parts)
        consumer.assign(parts)
        await consumer.commit({tp: OffsetAndMetadata(off, "") for tp, off in ends.items()})
    finally:
        await consumer.stop()
    drained = time.monotonic()
    await asyncio.to_thread(wait_for, lambda: replicas(1, 0), timeout=30, what="1 worker")
    # Not at once: the pool holds 4 for its 3 s scale-down window (the last high reading was
    # at most one 1 s tick before the drain).
    assert time.monotonic() - drained >= 1.5
    scaled = [e for e in _events(crd, NS, "alpha") if e["reason"] == "Scaled"]
    assert any("4 -> 1" in e["message"] for e in scaled), scaled


async def test_scale_subresource_pins_and_shrink_is_a_condition(
    crd: K8sCluster, operator: None, kafka: KafkaBroker
) -> None:
    crd.kubectl("scale", "sendingpool", "alpha", "-n", NS, "--replicas=2")
    wait_for(
        lambda: (d := _deployment(crd, "alpha")) and d["spec"]["replicas"] == 2, what="pinned 2"
    )
    scale = get_json(crd, "sendingpool", "alpha", "-n", NS, "--subresource=scale")
    assert scale is not None and scale["spec"]["replicas"] == 2
    assert scale["status"]["selector"].endswith("mailsluice.io/pool=alpha")
    crd.kubectl(
        "patch",
        "sendingpool",
        "alpha",
        "-n",
        NS,
        "--type=json",
        "-p",
        '[{"op": "remove", "path": "/spec/replicas"}]',
    )
    # Ask for fewer partitions than the topic has: reported, never applied, nothing crashes.
    _apply(
        crd,
        pool_yaml(
            "alpha",
            ehloName="mta2.example.test",
            partitions=2,
            maxWorkers=2,
            warmup={"preset": "none"},
        ),
    )
    pool = wait_for(
        lambda: (
            (p := _pool(crd, "alpha"))
            and condition(p, "Stalled").get("reason") == "PartitionsShrinkRefused"
            and p
        ),
        what="PartitionsShrinkRefused",
    )
    assert condition(pool, "Stalled")["status"] == "True"
    assert pool["status"]["partitions"] == 4
    assert await _topic_partitions(kafka, "mailsluice.queue.alpha") == 4
    assert any(e["reason"] == "PartitionsShrinkRefused" for e in _events(crd, NS, "alpha"))
    # Growing works.
    _apply(crd, pool_yaml("alpha", ehloName="mta2.example.test", partitions=6))
    wait_for(
        lambda: (p := _pool(crd, "alpha")) and p["status"].get("partitions") == 6, what="grown"
    )
    assert await _topic_partitions(kafka, "mailsluice.queue.alpha") == 6


async def _write_warmup_ledger(kafka: KafkaBroker, pool: str, used: dict[str, int]) -> None:
    """Records as delivery workers keep them on the compacted topic mailsluice.warmup."""
    settings = kafka.settings()
    await ensure_topics(
        settings, [TopicSpec(contracts.WARMUP_TOPIC, 2, {"cleanup.policy": "compact"})]
    )
    midnight = dt.datetime.combine(dt.datetime.now(dt.UTC).date(), dt.time(), tzinfo=dt.UTC)
    producer = make_producer(settings, max_message_size=1024, client_id="test-ledger")
    await producer.start()
    try:
        for scope, count in used.items():
            value = {
                "v": 1,
                "pool": pool,
                "source": "",
                "scope": scope,
                "start": midnight.date().isoformat(),
                "window": midnight.timestamp(),
                "used": count,
            }
            await producer.send_and_wait(
                contracts.WARMUP_TOPIC, json.dumps(value).encode(), key=f"{pool}//{scope}".encode()
            )
    finally:
        await producer.stop()


async def test_warmup_and_missing_secret_show_in_status(
    crd: K8sCluster, operator: None, kafka: KafkaBroker
) -> None:
    await _write_warmup_ledger(kafka, "warm", {"*@0": 30, "*@1": 12})
    env = [{"name": "SMTP_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "smtp", "key": "pw"}}}]
    _apply(
        crd,
        pool_yaml("warm", warmup={"preset": "ses-45-day"}, workerTemplate={"env": env}),
    )
    pool = wait_for(
        lambda: (p := _pool(crd, "warm")) and condition(p, "Stalled").get("status") == "True" and p,
        what="SecretNotFound",
    )
    assert condition(pool, "Stalled")["reason"] == "SecretNotFound"
    assert condition(pool, "Ready")["status"] == "False"
    wait_for(
        lambda: any(e["reason"] == "SecretNotFound" for e in _events(crd, NS, "warm")),
        what="Warning event",
    )
    crd.kubectl("create", "secret", "generic", "smtp", "-n", NS, "--from-literal=pw=s3cret")
    pool = wait_for(
        lambda: (
            (p := _pool(crd, "warm")) and condition(p, "Stalled").get("status") == "False" and p
        ),
        what="recovered",
    )
    pool = await asyncio.to_thread(
        wait_for,
        lambda: (p := _pool(crd, "warm")) and p["status"].get("todayUsage") == 42 and p,
        what="today's usage from the ledger",
    )
    assert pool["status"]["warmupDay"] == 1 and pool["status"]["todayCap"] == 100
    assert _deployment(crd, "warm") is not None


async def test_delete_cleans_up_children_and_keeps_the_topic(
    crd: K8sCluster, operator: None, kafka: KafkaBroker
) -> None:
    for pool in ("alpha", "warm"):
        _delete_pool(crd, pool, NS)
        assert _deployment(crd, pool) is None
        assert get_json(crd, "configmap", f"mailsluice-pool-{pool}", "-n", NS) is None
        assert get_json(crd, "pdb", f"mailsluice-delivery-{pool}", "-n", NS) is None
    # The queue may still hold accepted mail: the topic outlives the pool, by design.
    assert await _topic_partitions(kafka, "mailsluice.queue.alpha") == 6


def test_kafka_unreachable_is_a_condition_and_the_operator_keeps_running(
    crd: K8sCluster,
) -> None:
    op = OperatorSettings(scale_interval_s=1.0, kafka_timeout_s=2.0)
    # Nothing listens on that port: every Kafka round fails fast.
    settings = KafkaSettings(bootstrap=f"127.0.0.1:{_free_port()}", request_timeout_ms=1000)
    with running_operator(NS_NO_KAFKA, build_registry(op, settings), crd.kubeconfig):
        _apply(crd, pool_yaml("lonely", NS_NO_KAFKA))
        pool = wait_for(
            lambda: (
                (p := _pool(crd, "lonely", NS_NO_KAFKA))
                and condition(p, "Stalled").get("reason") == "KafkaUnavailable"
                and p
            ),
            what="KafkaUnavailable",
        )
        assert condition(pool, "Ready")["status"] == "False"
        assert _deployment(crd, "lonely", NS_NO_KAFKA) is not None  # children need no Kafka
        wait_for(
            lambda: any(
                e["reason"] == "KafkaUnavailable" for e in _events(crd, NS_NO_KAFKA, "lonely")
            ),
            what="Warning event",
        )
        # Still alive: a spec change is still rendered.
        _apply(crd, pool_yaml("lonely", NS_NO_KAFKA, ehloName="other.example.test"))
        wait_for(
            lambda: (
                "other.example.test" in json.dumps(_deployment(crd, "lonely", NS_NO_KAFKA) or {})
            ),
            what="spec change rendered",
        )
        _delete_pool(crd, "lonely", NS_NO_KAFKA)


def test_operator_works_with_only_the_charts_rbac(
    crd: K8sCluster, kafka: KafkaBroker, tmp_path: Path
) -> None:
    """Run the operator as the chart's ServiceAccount: its Role must be enough, and no more."""
    ns = "op-rbac"
    if get_json(crd, "namespace", ns) is None:
        crd.kubectl("create", "namespace", ns)
    rendered = subprocess.run(
        [
            str(crd.helm),
            "template",
            "rel",
            str(CHART),
            "--namespace",
            ns,
            "--kube-version",
            "1.34.0",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    wanted = {"ServiceAccount", "Role", "RoleBinding"}
    docs = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] in wanted]
    assert len(docs) == 3
    crd.kubectl("apply", "-f", "-", input="\n---\n".join(yaml.safe_dump(d) for d in docs))
    account = f"system:serviceaccount:{ns}:rel-mailsluice-operator"
    for verb, resource, allowed in [
        ("patch", "deployments.apps", "yes"),
        ("get", "secrets", "yes"),
        ("list", "secrets", "no"),
        ("delete", "sendingpools.mailsluice.io", "no"),
        ("create", "pods", "no"),
    ]:
        proc = crd.kubectl(
            "auth", "can-i", verb, resource, "-n", ns, f"--as={account}", check=False
        )
        assert proc.stdout.strip() == allowed, (verb, resource, proc.stdout)
    token = crd.kubectl("create", "token", "rel-mailsluice-operator", "-n", ns).stdout.strip()
    kubeconfig = tmp_path / "operator-kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "c",
                        "cluster": {"server": crd.server, "insecure-skip-tls-verify": True},
                    }
                ],
                "users": [{"name": "operator", "user": {"token": token}}],
                "contexts": [{"name": "op", "context": {"cluster": "c", "user": "operator"}}],
                "current-context": "op",
            }
        )
    )
    op = OperatorSettings(scale_interval_s=1.0, kafka_timeout_s=10.0)
    with running_operator(ns, build_registry(op, kafka.settings()), kubeconfig):
        _apply(crd, pool_yaml("rbac", ns))
        pool = wait_for(
            lambda: (
                (p := _pool(crd, "rbac", ns))
                and condition(p, "Ready").get("reason") == "NoWorkerReady"
                and p
            ),
            what="status written by the ServiceAccount",
        )
        assert pool["status"]["partitions"] == 4
        assert _deployment(crd, "rbac", ns) is not None
        assert get_json(crd, "pdb", "mailsluice-delivery-rbac", "-n", ns) is not None
        _delete_pool(crd, "rbac", ns)
        assert _deployment(crd, "rbac", ns) is None


def test_operator_command_runs_against_the_kubeconfig(crd: K8sCluster, kafka: KafkaBroker) -> None:
    """`mailsluice operator` as a process: settings from env, /healthz, a pool, clean SIGTERM."""
    ns = "op-cli"
    if get_json(crd, "namespace", ns) is None:
        crd.kubectl("create", "namespace", ns)
    port = _free_port()
    env = {
        **os.environ,
        "KUBECONFIG": str(crd.kubeconfig),
        "MAILSLUICE_KAFKA_BOOTSTRAP": kafka.bootstrap,
        "MAILSLUICE_OPERATOR_NAMESPACE": ns,
        "MAILSLUICE_OPERATOR_HEALTH_PORT": str(port),
        "MAILSLUICE_OPERATOR_SCALE_INTERVAL_S": "1",
    }
    code = "import argparse, sys; from mailsluice_operator import cli; p = argparse.ArgumentParser(); cli.add_arguments(p); sys.exit(cli.run(p.parse_args([])))"  # noqa: E501
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        wait_for(healthy, what="/healthz")
        _apply(crd, pool_yaml("cli", ns))
        wait_for(lambda: _deployment(crd, "cli", ns), what="Deployment from the process")
        _delete_pool(crd, "cli", ns)
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output.decode()[-3000:]
