"""The operator under kopf's KopfRunner against a real kube-apiserver and a real Kafka broker.

There is no controller-manager: Deployments get no pods and nothing garbage-collects. Where a
test needs ready workers it writes the Deployment's status itself, as the deployment controller
would; cleanup on delete is the operator's own delete handler.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from support.eventually import eventually, eventually_sync
from support.k8s_cluster import K8sCluster
from support.k8s_fixtures import (
    KUBECTL_POLL_S,
    condition,
    get_json,
    running_operator,
)
from support.kafka_broker import KafkaBroker
from support.operator_cluster import (
    NS,
    apply_yaml,
    delete_pool,
    events_for,
    get_deployment,
    get_pool,
    pool_yaml,
    prepare,
    pretend_workers_ready,
    topic_partitions,
)

from mailsluice.contracts.topics import WARMUP_TOPIC, TopicSpec
from mailsluice.kafka.admin import ensure_topics
from mailsluice.kafka.clients import make_producer
from mailsluice_operator.handlers import build_registry
from mailsluice_operator.settings import OperatorSettings
from mailsluice_operator.spec import with_defaults


@pytest.fixture(scope="module")
def crd(cluster: K8sCluster) -> K8sCluster:
    return prepare(cluster)


@pytest.fixture(scope="module")
def operator(crd: K8sCluster, kafka: KafkaBroker) -> Iterator[None]:
    op = OperatorSettings(scale_interval_s=1.0, kafka_timeout_s=10.0, image="mailsluice:test")
    registry = build_registry(op, kafka.settings())
    with running_operator(NS, registry, crd.kubeconfig):
        yield


def test_crd_is_established_and_refuses_invalid_specs(crd: K8sCluster) -> None:
    got = get_json(crd, "crd", "sendingpools.mailsluice.io")
    assert got is not None
    established = [c for c in got["status"]["conditions"] if c["type"] == "Established"]
    assert established[0]["status"] == "True"
    cases = {
        "minWorkers must not exceed maxWorkers": {"minWorkers": 3, "maxWorkers": 2},
        "maxWorkers must not exceed partitions": {"maxWorkers": 8},
        'Unsupported value: "yolo"': {"warmup": {"preset": "yolo"}},
        "every source address is an IP": {"sourceAddresses": ["mta.example.test"]},
        'spec.sourceAddresses[1]: Duplicate value: "192.0.2.10"': {
            "sourceAddresses": ["192.0.2.10", "192.0.2.10"]
        },
        "either a warm-up preset or a table": {
            "warmup": {"preset": "ses-45-day", "table": [{"day": 1, "volume": 10}]}
        },
        "replicas must not exceed partitions": {"replicas": 5},
        "spec.partitions: Invalid value": {"partitions": 0, "maxWorkers": 0, "minWorkers": 0},
        "spec.ehloName in body should match": {"ehloName": "Not_A_Host"},
        "spec.shaping[0].messagesPerSecond in body should be greater than 0": {
            "shaping": [{"match": "google", "messagesPerSecond": 0}]
        },
        "Duplicate value": {"shaping": [{"match": "google"}, {"match": "google"}]},
        "spec.warmup.table[0].day in body should be greater than or equal to 1": {
            "warmup": {"table": [{"day": 0, "volume": 10}]}
        },
        "give the address either its own startDate or warm: true": {
            "warmup": {"sources": [{"address": "192.0.2.10"}]}
        },
        "address must be an IP address": {
            "warmup": {"sources": [{"address": "mta.example.test", "warm": True}]}
        },
    }
    for needle, spec in cases.items():
        proc = crd.kubectl("apply", "-f", "-", input=pool_yaml("refused", **spec), check=False)
        assert proc.returncode != 0 and needle in proc.stderr, (needle, proc.stderr)
    assert get_pool(crd, "refused") is None


def test_the_api_server_defaults_a_spec_as_reconcile_does(crd: K8sCluster) -> None:
    """Both read the defaults from the models in mailsluice_operator.spec."""
    env = [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]
    for sent in (
        {"ehloName": "mta.example.test"},
        {
            "ehloName": "mta.example.test",
            "maxWorkers": 2,
            "warmup": {"table": [{"day": 1, "volume": 5}]},
            "workerTemplate": {"env": env, "tolerations": [{"key": "mail", "operator": "Exists"}]},
        },
    ):
        body = {
            "apiVersion": "mailsluice.io/v1alpha1",
            "kind": "SendingPool",
            "metadata": {"name": "defaults", "namespace": NS},
            "spec": sent,
        }
        out = crd.kubectl(
            "apply", "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(body)
        ).stdout
        assert json.loads(out)["spec"] == with_defaults(sent)
    assert get_pool(crd, "defaults") is None


async def test_pool_gets_children_topic_and_ready_status(
    crd: K8sCluster, operator: None, kafka: KafkaBroker
) -> None:
    apply_yaml(crd, pool_yaml("alpha", warmup={"preset": "none"}))
    dep = eventually_sync(
        lambda: get_deployment(crd, "alpha"), within=60, interval=KUBECTL_POLL_S, what="Deployment"
    )
    pool = get_pool(crd, "alpha")
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
    # The spec reaches the workers as their env only: no ConfigMap for them to ignore.
    assert get_json(crd, "configmap", "mailsluice-pool-alpha", "-n", NS) is None
    pdb = get_json(crd, "pdb", "mailsluice-delivery-alpha", "-n", NS)
    assert pdb is not None and pdb["spec"]["maxUnavailable"] == 1
    assert await topic_partitions(kafka, "mailsluice.queue.alpha") == 4

    # No pods without a controller-manager: the pool says so rather than claiming Ready.
    pool = eventually_sync(
        lambda: (
            (p := get_pool(crd, "alpha"))
            and condition(p, "Ready").get("reason") == "NoWorkerReady"
            and p
        ),
        within=60,
        interval=KUBECTL_POLL_S,
        what="NoWorkerReady",
    )
    assert condition(pool, "Ready")["status"] == "False"
    pretend_workers_ready(crd, "alpha", 1)
    pool = eventually_sync(
        lambda: (
            (p := get_pool(crd, "alpha")) and condition(p, "Ready").get("status") == "True" and p
        ),
        within=60,
        interval=KUBECTL_POLL_S,
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
    # Its own pool: pytest-asyncio runs this sync test apart from the async ones around it.
    apply_yaml(crd, pool_yaml("alpha", warmup={"preset": "none"}))
    before = eventually_sync(
        lambda: get_deployment(crd, "alpha"), within=60, interval=KUBECTL_POLL_S, what="Deployment"
    )
    old_hash = before["spec"]["template"]["metadata"]["annotations"]["mailsluice.io/spec-hash"]
    apply_yaml(crd, pool_yaml("alpha", ehloName="mta2.example.test", warmup={"preset": "none"}))

    def rolled() -> dict[str, Any] | None:
        dep = get_deployment(crd, "alpha")
        annotations = dep["spec"]["template"]["metadata"]["annotations"] if dep else {}
        return dep if annotations["mailsluice.io/spec-hash"] != old_hash else None

    dep = rolled_dep = eventually_sync(
        rolled, within=60, interval=KUBECTL_POLL_S, what="new spec hash"
    )
    env = {
        e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["MAILSLUICE_OUTBOUND_EHLO_NAME"] == "mta2.example.test"
    assert rolled_dep["metadata"]["generation"] > before["metadata"]["generation"]
    pool = eventually_sync(
        lambda: (
            (p := get_pool(crd, "alpha"))
            and p["status"].get("observedGeneration") == p["metadata"]["generation"]
            and p
        ),
        within=60,
        interval=KUBECTL_POLL_S,
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
        pool, dep = get_pool(crd, "alpha"), get_deployment(crd, "alpha")
        if not (pool and dep) or dep["spec"]["replicas"] != want:
            return None
        status = pool["status"]
        return pool if status.get("replicas") == want and status.get("lag") == lag else None

    # ceil(35 / 10) = 4 = partitions = max
    pool = await eventually(
        lambda: replicas(4, 35), within=60, interval=KUBECTL_POLL_S, what="4 workers", blocking=True
    )
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
    await eventually(
        lambda: replicas(1, 0), within=30, interval=KUBECTL_POLL_S, what="1 worker", blocking=True
    )
    # Not at once: the pool holds 4 for its 3 s scale-down window (the last high reading was
    # at most one 1 s tick before the drain).
    assert time.monotonic() - drained >= 1.5
    scaled = [e for e in events_for(crd, NS, "alpha") if e["reason"] == "Scaled"]
    assert any("4 -> 1" in e["message"] for e in scaled), scaled


async def test_scale_subresource_pins_and_shrink_is_a_condition(
    crd: K8sCluster, operator: None, kafka: KafkaBroker
) -> None:
    crd.kubectl("scale", "sendingpool", "alpha", "-n", NS, "--replicas=2")
    eventually_sync(
        lambda: (d := get_deployment(crd, "alpha")) and d["spec"]["replicas"] == 2,
        within=60,
        interval=KUBECTL_POLL_S,
        what="pinned 2",
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
    apply_yaml(
        crd,
        pool_yaml(
            "alpha",
            ehloName="mta2.example.test",
            partitions=2,
            maxWorkers=2,
            warmup={"preset": "none"},
        ),
    )
    pool = eventually_sync(
        lambda: (
            (p := get_pool(crd, "alpha"))
            and condition(p, "Stalled").get("reason") == "PartitionsShrinkRefused"
            and p
        ),
        within=60,
        interval=KUBECTL_POLL_S,
        what="PartitionsShrinkRefused",
    )
    assert condition(pool, "Stalled")["status"] == "True"
    assert pool["status"]["partitions"] == 4
    assert await topic_partitions(kafka, "mailsluice.queue.alpha") == 4
    assert any(e["reason"] == "PartitionsShrinkRefused" for e in events_for(crd, NS, "alpha"))
    # Growing works.
    apply_yaml(crd, pool_yaml("alpha", ehloName="mta2.example.test", partitions=6))
    eventually_sync(
        lambda: (p := get_pool(crd, "alpha")) and p["status"].get("partitions") == 6,
        within=60,
        interval=KUBECTL_POLL_S,
        what="grown",
    )
    assert await topic_partitions(kafka, "mailsluice.queue.alpha") == 6


async def _write_warmup_ledger(
    kafka: KafkaBroker, pool: str, used: dict[str, int], source: str = "192.0.2.10"
) -> None:
    """Records as delivery workers keep them on the compacted topic mailsluice.warmup, one per
    (source address, scope)."""
    settings = kafka.settings()
    await ensure_topics(settings, [TopicSpec(WARMUP_TOPIC, 2, {"cleanup.policy": "compact"})])
    midnight = dt.datetime.combine(dt.datetime.now(dt.UTC).date(), dt.time(), tzinfo=dt.UTC)
    producer = make_producer(settings, max_message_size=1024, client_id="test-ledger")
    await producer.start()
    try:
        for scope, count in used.items():
            value = {
                "v": 1,
                "pool": pool,
                "source": source,
                "scope": scope,
                "start": midnight.date().isoformat(),
                "window": midnight.timestamp(),
                "used": count,
            }
            await producer.send_and_wait(
                WARMUP_TOPIC, json.dumps(value).encode(), key=f"{pool}/{source}/{scope}".encode()
            )
    finally:
        await producer.stop()


async def test_warmup_and_missing_secret_show_in_status(
    crd: K8sCluster, operator: None, kafka: KafkaBroker
) -> None:
    await _write_warmup_ledger(kafka, "warm", {"*@0": 30, "*@1": 12})
    env = [{"name": "SMTP_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "smtp", "key": "pw"}}}]
    apply_yaml(
        crd,
        pool_yaml("warm", warmup={"preset": "ses-45-day"}, workerTemplate={"env": env}),
    )
    pool = eventually_sync(
        lambda: (
            (p := get_pool(crd, "warm")) and condition(p, "Stalled").get("status") == "True" and p
        ),
        within=60,
        interval=KUBECTL_POLL_S,
        what="SecretNotFound",
    )
    assert condition(pool, "Stalled")["reason"] == "SecretNotFound"
    assert condition(pool, "Ready")["status"] == "False"
    eventually_sync(
        lambda: any(e["reason"] == "SecretNotFound" for e in events_for(crd, NS, "warm")),
        within=60,
        interval=KUBECTL_POLL_S,
        what="Warning event",
    )
    crd.kubectl("create", "secret", "generic", "smtp", "-n", NS, "--from-literal=pw=s3cret")
    pool = eventually_sync(
        lambda: (
            (p := get_pool(crd, "warm")) and condition(p, "Stalled").get("status") == "False" and p
        ),
        within=60,
        interval=KUBECTL_POLL_S,
        what="recovered",
    )
    applied = eventually_sync(
        lambda: [e["message"] for e in events_for(crd, NS, "warm") if e["reason"] == "Applied"],
        within=60,
        interval=KUBECTL_POLL_S,
        what="Normal event for the created children",
    )
    assert applied == [
        "created Deployment mailsluice-delivery-warm; "
        "created PodDisruptionBudget mailsluice-delivery-warm"
    ]
    warnings = [e for e in events_for(crd, NS, "warm") if e["reason"] == "SecretNotFound"]
    assert len(warnings) == 1 and warnings[0].get("count", 1) == 1  # once, not per handler
    pool = await eventually(
        lambda: (p := get_pool(crd, "warm")) and p["status"].get("todayUsage") == 42 and p,
        within=60,
        interval=KUBECTL_POLL_S,
        what="today's usage from the ledger",
        blocking=True,
    )
    assert pool["status"]["warmupDay"] == 1 and pool["status"]["todayCap"] == 100
    assert pool["status"]["warmup"] == [
        {"address": "192.0.2.10", "warm": False, "day": 1, "cap": 100, "usage": 42}
    ]
    assert get_deployment(crd, "warm") is not None


async def test_delete_cleans_up_children_and_keeps_the_topic(
    crd: K8sCluster, operator: None, kafka: KafkaBroker
) -> None:
    for pool in ("alpha", "warm"):
        delete_pool(crd, pool, NS)
        assert get_deployment(crd, pool) is None
        assert get_json(crd, "pdb", f"mailsluice-delivery-{pool}", "-n", NS) is None
    # The queue may still hold accepted mail: the topic outlives the pool, by design.
    assert await topic_partitions(kafka, "mailsluice.queue.alpha") == 6
