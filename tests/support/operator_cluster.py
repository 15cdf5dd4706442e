"""Helpers for the operator tests against the real API server: pool manifests and lookups.

tests/operator/test_cluster.py (a pool's life under one operator) and tests/operator/test_runtime.py
(the operator without Kafka, with only the chart's RBAC, as a process) share them.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import yaml
from aiokafka.admin import AIOKafkaAdminClient

from support.eventually import eventually_sync
from support.k8s_cluster import K8sCluster
from support.k8s_fixtures import CHART, KUBECTL_POLL_S, apply_crd, get_json, write_kubeconfig
from support.kafka_broker import KafkaBroker

NS = "op-test"
NS_NO_KAFKA = "op-nokafka"


def prepare(cluster: K8sCluster, *namespaces: str) -> K8sCluster:
    """The CRDs applied and the test namespaces created (idempotent, for module fixtures)."""
    apply_crd(cluster)
    for ns in (NS, NS_NO_KAFKA, *namespaces):
        ensure_namespace(cluster, ns)
    return cluster


def ensure_namespace(cluster: K8sCluster, ns: str) -> None:
    if get_json(cluster, "namespace", ns) is None:
        cluster.kubectl("create", "namespace", ns)


def chart_operator_kubeconfig(cluster: K8sCluster, ns: str, path: Path) -> Path:
    """The chart's operator ServiceAccount, Role and RoleBinding applied in `ns`, and a
    kubeconfig at `path` with that account's token: the operator with only the chart's rights."""
    ensure_namespace(cluster, ns)
    rendered = subprocess.run(
        [str(cluster.helm), "template", "rel", str(CHART), "-n", ns, "--kube-version", "1.34.0"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    wanted = {"ServiceAccount", "Role", "RoleBinding"}
    docs = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] in wanted]
    assert len(docs) == 3
    cluster.kubectl("apply", "-f", "-", input="\n---\n".join(yaml.safe_dump(d) for d in docs))
    token = cluster.kubectl("create", "token", "rel-mailsluice-operator", "-n", ns).stdout.strip()
    return write_kubeconfig(path, cluster.server, {"token": token}, ca_file=cluster.ca_file)


def can_i(cluster: K8sCluster, ns: str, verb: str, what: str) -> str:
    """`kubectl auth can-i` as the chart's operator ServiceAccount in `ns`: yes or no."""
    account = f"system:serviceaccount:{ns}:rel-mailsluice-operator"
    proc = cluster.kubectl("auth", "can-i", verb, what, "-n", ns, f"--as={account}", check=False)
    return proc.stdout.strip()


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


def apply_yaml(cluster: K8sCluster, doc: str) -> None:
    cluster.kubectl("apply", "--server-side", "--field-manager=test", "-f", "-", input=doc)


def get_pool(cluster: K8sCluster, name: str, ns: str = NS) -> dict[str, Any] | None:
    return get_json(cluster, "sendingpool", name, "-n", ns)


def get_deployment(cluster: K8sCluster, pool: str, ns: str = NS) -> dict[str, Any] | None:
    return get_json(cluster, "deployment", f"mailsluice-delivery-{pool}", "-n", ns)


def pretend_workers_ready(cluster: K8sCluster, pool: str, ready: int, ns: str = NS) -> None:
    """Write Deployment status as the (absent) deployment controller would."""
    dep = get_deployment(cluster, pool, ns)
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
        ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
    )


def delete_pool(cluster: K8sCluster, name: str, ns: str) -> None:
    # Poll rather than `kubectl delete --timeout`: its watch-based wait proved flaky here.
    cluster.kubectl("delete", "sendingpool", name, "-n", ns, "--wait=false")
    eventually_sync(
        lambda: get_pool(cluster, name, ns) is None,
        within=60,
        interval=KUBECTL_POLL_S,
        what=f"{name} gone",
        detail=lambda: get_pool(cluster, name, ns),
    )


def events_for(cluster: K8sCluster, ns: str, name: str) -> list[dict[str, Any]]:
    listed = get_json(cluster, "events", "-n", ns) or {}
    return [e for e in listed.get("items", []) if e["involvedObject"]["name"] == name]


async def topic_partitions(kafka: KafkaBroker, topic: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
        return 0 if described["error_code"] else len(described["partitions"])
    finally:
        await admin.close()
