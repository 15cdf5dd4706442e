"""The operator against a real kube-apiserver, each test with its own operator: without a
reachable Kafka, with only the chart's RBAC, and as the `mailsluice operator` process.

There is no controller-manager (see tests/operator/test_cluster.py); these tests need no workers.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from support.eventually import eventually_sync
from support.k8s_cluster import K8sCluster
from support.k8s_fixtures import (
    KUBECTL_POLL_S,
    condition,
    get_json,
    running_operator,
)
from support.kafka_broker import KafkaBroker
from support.loopback import free_port
from support.operator_cluster import (
    NS_NO_KAFKA,
    apply_yaml,
    can_i,
    chart_operator_kubeconfig,
    delete_pool,
    events_for,
    get_deployment,
    get_pool,
    pool_yaml,
    prepare,
)
from support.processes import get

from mailsluice.kafka.settings import KafkaSettings
from mailsluice_operator.handlers import build_registry
from mailsluice_operator.settings import OperatorSettings


@pytest.fixture(scope="module")
def crd(cluster: K8sCluster) -> K8sCluster:
    return prepare(cluster)


def test_kafka_unreachable_is_a_condition_and_the_operator_keeps_running(
    crd: K8sCluster,
) -> None:
    op = OperatorSettings(scale_interval_s=1.0, kafka_timeout_s=2.0)
    # Nothing listens on that port: every Kafka round fails fast.
    settings = KafkaSettings(bootstrap=f"127.0.0.1:{free_port()}", request_timeout_ms=1000)
    with running_operator(NS_NO_KAFKA, build_registry(op, settings), crd.kubeconfig):
        apply_yaml(crd, pool_yaml("lonely", NS_NO_KAFKA))
        pool = eventually_sync(
            lambda: (
                (p := get_pool(crd, "lonely", NS_NO_KAFKA))
                and condition(p, "Stalled").get("reason") == "KafkaUnavailable"
                and p
            ),
            within=60,
            interval=KUBECTL_POLL_S,
            what="KafkaUnavailable",
        )
        assert condition(pool, "Ready")["status"] == "False"
        assert get_deployment(crd, "lonely", NS_NO_KAFKA) is not None  # children need no Kafka
        eventually_sync(
            lambda: any(
                e["reason"] == "KafkaUnavailable" for e in events_for(crd, NS_NO_KAFKA, "lonely")
            ),
            within=60,
            interval=KUBECTL_POLL_S,
            what="Warning event",
        )
        # Still alive: a spec change is still rendered.
        apply_yaml(crd, pool_yaml("lonely", NS_NO_KAFKA, ehloName="other.example.test"))
        eventually_sync(
            lambda: (
                "other.example.test" in json.dumps(get_deployment(crd, "lonely", NS_NO_KAFKA) or {})
            ),
            within=60,
            interval=KUBECTL_POLL_S,
            what="spec change rendered",
        )
        delete_pool(crd, "lonely", NS_NO_KAFKA)


def test_operator_works_with_only_the_charts_rbac(
    crd: K8sCluster, kafka: KafkaBroker, tmp_path: Path
) -> None:
    """Run the operator as the chart's ServiceAccount: its Role must be enough, and no more."""
    ns = "op-rbac"
    kubeconfig = chart_operator_kubeconfig(crd, ns, tmp_path / "operator-kubeconfig")
    for verb, resource, allowed in [
        ("patch", "deployments.apps", "yes"),
        ("get", "secrets", "yes"),
        ("list", "secrets", "no"),
        ("delete", "sendingpools.mailsluice.io", "no"),
        ("create", "pods", "no"),
    ]:
        assert can_i(crd, ns, verb, resource) == allowed, (verb, resource)
    op = OperatorSettings(scale_interval_s=1.0, kafka_timeout_s=10.0)
    with running_operator(ns, build_registry(op, kafka.settings()), kubeconfig):
        apply_yaml(crd, pool_yaml("rbac", ns))
        pool = eventually_sync(
            lambda: (
                (p := get_pool(crd, "rbac", ns))
                and condition(p, "Ready").get("reason") == "NoWorkerReady"
                and p
            ),
            within=60,
            interval=KUBECTL_POLL_S,
            what="status written by the ServiceAccount",
        )
        assert pool["status"]["partitions"] == 4
        assert get_deployment(crd, "rbac", ns) is not None
        assert get_json(crd, "pdb", "mailsluice-delivery-rbac", "-n", ns) is not None
        delete_pool(crd, "rbac", ns)
        assert get_deployment(crd, "rbac", ns) is None


def test_operator_command_runs_against_the_kubeconfig(crd: K8sCluster, kafka: KafkaBroker) -> None:
    """`mailsluice operator` as a process: settings from env, /healthz and /metrics on loopback
    only (outside a cluster), a pool, clean SIGTERM."""
    ns = "op-cli"
    if get_json(crd, "namespace", ns) is None:
        crd.kubectl("create", "namespace", ns)
    port, metrics_port = free_port(), free_port()
    env = {
        **os.environ,
        "KUBECONFIG": str(crd.kubeconfig),
        "MAILSLUICE_KAFKA_BOOTSTRAP": kafka.bootstrap,
        "MAILSLUICE_OPERATOR_NAMESPACE": ns,
        "MAILSLUICE_OPERATOR_HEALTH_PORT": str(port),
        "MAILSLUICE_OPERATOR_METRICS_PORT": str(metrics_port),
        "MAILSLUICE_OPERATOR_SCALE_INTERVAL_S": "1",
    }
    code = "import argparse, sys; from mailsluice_operator import cli; p = argparse.ArgumentParser(); cli.add_arguments(p); sys.exit(cli.run(p.parse_args([])))"  # noqa: E501
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        eventually_sync(
            lambda: get(f"http://127.0.0.1:{port}/healthz")[0] == 200,
            within=60,
            what="/healthz",
        )
        assert listening_on(port) == {"127.0.0.1"}
        assert listening_on(metrics_port) == {"127.0.0.1"}
        apply_yaml(crd, pool_yaml("cli", ns))
        eventually_sync(
            lambda: get_deployment(crd, "cli", ns),
            within=60,
            interval=KUBECTL_POLL_S,
            what="Deployment from the process",
        )
        delete_pool(crd, "cli", ns)
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output.decode()[-3000:]


def listening_on(port: int) -> set[str]:
    """The IPv4 addresses with a socket listening on `port` (from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            found.add(str(ipaddress.IPv4Address(bytes.fromhex(address)[::-1])))
    return found
