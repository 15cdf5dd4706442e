"""Stopping the node cluster leaves nothing behind: no process, mount, bridge, iptables chain or
cgroup of ours, and the host's sysctls, links, routes and shared directories as they were.

A module of its own, run after test_node.py: it stops the session's cluster (a later test that
asks for `node` starts it again)."""

from __future__ import annotations

from support.k8s_node import NodeCluster

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: left-running, namespace: default}
spec:
  replicas: 2
  selector: {matchLabels: {app: left-running}}
  template:
    metadata: {labels: {app: left-running}}
    spec:
      containers:
      - {name: probe, image: localhost/mailsluice-apiprobe:test, imagePullPolicy: Never}
"""


def test_stop_with_pods_running_leaves_the_host_as_found(node: NodeCluster) -> None:
    # Pods still running when the cluster stops: their containers, shims, netns, volumes and
    # veths must go too.
    node.kubectl("apply", "-f", "-", input=DEPLOYMENT)
    node.kubectl("rollout", "status", "deployment/left-running", "--timeout=120s", timeout=150)
    running = node.leftovers()  # what `down` has to remove: the check sees it while it is there
    pod_processes = [p for p in running["processes"] if p.startswith("pod process ")]
    assert len(pod_processes) >= 4, running  # two pods: pause + probe each
    assert len(running["mounts"]) >= 6, running  # each pod: netns, shm, rootfs x2, token volume
    assert running["bridge"] and running["iptables"] and running["cgroups"], running
    before = node.host_before
    node.stop()
    assert node.leftovers() == {
        "processes": [],
        "mounts": [],
        "bridge": [],
        "iptables": [],
        "cgroups": [],
    }
    if before is not None:  # None: the cluster was already running when the session began
        assert node.host_now() == before
