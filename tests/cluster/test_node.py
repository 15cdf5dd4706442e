"""The node cluster (scripts/k8s_node.py) runs pods for real: the node registers and is Ready, a
Deployment's pod becomes Ready, reaches the apiserver through the `kubernetes` ClusterIP, and
kubectl port-forward, logs, exec and delete work through the kubelet."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import select
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from support.eventually import eventually_sync
from support.k8s_node import APIPROBE_REF, NodeCluster

LABEL = "app=apiprobe"
DEPLOYMENT = f"""\
apiVersion: apps/v1
kind: Deployment
metadata: {{name: apiprobe, namespace: default}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: apiprobe}}}}
  template:
    metadata: {{labels: {{app: apiprobe}}}}
    spec:
      terminationGracePeriodSeconds: 5
      containers:
      - name: probe
        image: {APIPROBE_REF}
        imagePullPolicy: Never
        ports: [{{containerPort: 8080}}]
        readinessProbe: {{httpGet: {{path: /healthz, port: 8080}}, periodSeconds: 1}}
"""


def _ready_pods(node: NodeCluster) -> list[dict[str, Any]]:
    """Pods of the Deployment that are Ready and not being deleted."""
    pods = json.loads(node.kubectl("get", "pods", "-l", LABEL, "-o", "json").stdout)["items"]
    return [
        pod
        for pod in pods
        if "deletionTimestamp" not in pod["metadata"]
        and any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in pod["status"].get("conditions", [])
        )
    ]


def _wait_ready_pod(node: NodeCluster, within: float = 120) -> dict[str, Any]:
    pods: list[dict[str, Any]] = eventually_sync(
        lambda: _ready_pods(node),
        within=within,
        interval=0.5,
        what="a Ready apiprobe pod",
        detail=lambda: (
            node.kubectl("describe", "pods", "-l", LABEL, check=False).stdout
            + node.log_tail("kubelet")
        ),
    )
    return pods[0]


@pytest.fixture(scope="module")
def probe_pod(node_session: NodeCluster) -> Iterator[dict[str, Any]]:
    """The Deployment applied, its first pod Ready (the pod as the API returned it)."""
    node_session.start()
    node_session.kubectl("apply", "-f", "-", input=DEPLOYMENT)
    yield _wait_ready_pod(node_session)
    node_session.kubectl("delete", "deployment", "apiprobe", "--wait=true", check=False)


def _current_pod(node: NodeCluster) -> str:
    return str(_wait_ready_pod(node)["metadata"]["name"])


def test_the_node_registers_and_becomes_ready(node: NodeCluster) -> None:
    got = json.loads(node.kubectl("get", "node", node.node_name, "-o", "json").stdout)
    ready = [c for c in got["status"]["conditions"] if c["type"] == "Ready"]
    assert ready and ready[0]["status"] == "True", ready
    info = got["status"]["nodeInfo"]
    assert info["kubeletVersion"] == node.version == "v1.34.4"
    assert info["containerRuntimeVersion"].startswith("containerd://")
    assert {"type": "InternalIP", "address": node.node_ip} in got["status"]["addresses"]
    version = json.loads(node.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == version["clientVersion"]["gitVersion"]


def test_a_deployment_pod_becomes_ready_on_the_pod_network(
    node: NodeCluster, probe_pod: dict[str, Any]
) -> None:
    assert probe_pod["spec"]["nodeName"] == node.node_name
    pod_ip = ipaddress.ip_address(probe_pod["status"]["podIP"])
    assert pod_ip in ipaddress.ip_network("10.217.0.0/24")
    assert pod_ip != ipaddress.ip_address(node.node_ip)
    (status,) = probe_pod["status"]["containerStatuses"]
    assert status["ready"] and status["image"].endswith(APIPROBE_REF.split("/", 1)[1])


def _log_lines(node: NodeCluster, pod: str) -> list[str]:
    logs: str = node.kubectl("logs", pod).stdout
    return logs.splitlines()


def test_a_pod_reaches_the_apiserver_through_the_kubernetes_cluster_ip(
    node: NodeCluster, probe_pod: dict[str, Any]
) -> None:
    # The probe verified the apiserver against the CA of kube-root-ca.crt and sent its projected
    # service-account token; the address is the Service's ClusterIP that kube-proxy DNATs.
    pod = probe_pod["metadata"]["name"]
    cluster_ip = node.kubectl(
        "get", "service", "kubernetes", "-o", "jsonpath={.spec.clusterIP}"
    ).stdout
    assert ipaddress.ip_address(cluster_ip) in ipaddress.ip_network("10.217.1.0/24")
    lines = [line for line in _log_lines(node, pod) if line.startswith("apiserver ")]
    assert lines, _log_lines(node, pod)
    assert lines[0].startswith(f"apiserver url=https://{cluster_ip}:443/version status=200 ")
    assert f'"gitVersion": "{node.version}"' in lines[0]


def _forwarded_port(proc: subprocess.Popen[bytes], within: float) -> int:
    """The local port from kubectl port-forward's 'Forwarding from 127.0.0.1:PORT -> 8080'."""
    assert proc.stdout is not None
    deadline = time.monotonic() + within
    seen = b""
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([proc.stdout], [], [], left)
        chunk = os.read(proc.stdout.fileno(), 4096) if readable else b""
        if readable and not chunk:
            break  # kubectl exited
        seen += chunk
        match = re.search(rb"Forwarding from 127\.0\.0\.1:(\d+) ->", seen)
        if match:
            return int(match.group(1))
    raise AssertionError(f"kubectl port-forward printed no port within {within}s: {seen!r}")


def test_port_forward_reaches_the_pod(node: NodeCluster, probe_pod: dict[str, Any]) -> None:
    pod = _current_pod(node)
    argv = node.kubectl_argv("port-forward", f"pod/{pod}", ":8080")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        port = _forwarded_port(proc, within=30)
        url = f"http://127.0.0.1:{port}/apiserver"
        with urllib.request.urlopen(url, timeout=20) as resp:
            body = resp.read().decode()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()
    # The pod answered (through kubelet and containerd's stream server) with a fresh check.
    assert body.startswith("apiserver url=https://") and " status=200 " in body, body


def test_logs_and_exec_go_through_the_kubelet(node: NodeCluster, probe_pod: dict[str, Any]) -> None:
    pod = _current_pod(node)
    assert f"apiprobe starting, pod {pod}" in _log_lines(node, pod)
    # A second probe in the same container: it checks the apiserver, then finds :8080 taken.
    ran = node.kubectl("exec", pod, "--", "/apiprobe", check=False, timeout=60)
    assert ran.returncode == 1, ran
    assert " status=200 " in ran.stdout
    assert "address already in use" in ran.stdout + ran.stderr


def _running_tasks(node: NodeCluster) -> dict[str, str]:
    """containerd's tasks of the CRI namespace: container id -> status."""
    rows = node.ctr("tasks", "ls").stdout.splitlines()[1:]
    return {row.split()[0]: row.split()[2] for row in rows if len(row.split()) >= 3}


def test_deleting_a_pod_stops_its_container_and_the_deployment_replaces_it(
    node: NodeCluster, probe_pod: dict[str, Any]
) -> None:
    old = _wait_ready_pod(node)
    name = old["metadata"]["name"]
    container_id = old["status"]["containerStatuses"][0]["containerID"].split("://", 1)[1]
    assert _running_tasks(node).get(container_id) == "RUNNING"
    node.kubectl("delete", "pod", name, "--wait=true", "--timeout=60s")
    gone = node.kubectl("get", "pod", name, check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr
    eventually_sync(
        lambda: _running_tasks(node).get(container_id) != "RUNNING",
        within=30,
        what=f"container {container_id[:12]} stopped",
    )
    new = _wait_ready_pod(node)
    assert new["metadata"]["name"] != name
