"""Looking at the node cluster (scripts/k8s_node.py): the API as its admin, and the pods'
processes as containerd and the cgroups know them. Standard library only.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import localproc
from k8s_host import CGROUP_ROOT, NODE_IP, cgroup_mounts
from k8s_node_conf import API_PORT, NODE_NAME, Paths

SHIM_STOP_S = 5.0


def ctr(paths: Paths, *args: str) -> subprocess.CompletedProcess[str]:
    """containerd's own client on our socket, in the CRI's namespace."""
    argv = ["ctr", "--address", str(paths.socket), "--namespace", "k8s.io", *args]
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300)


def api_get(paths: Paths, path: str) -> Any:
    """GET an API path as the admin (client certificate, server checked against the CA);
    the decoded JSON, or None when it is not there (404) or the apiserver does not answer."""
    context = ssl.create_default_context(cafile=str(paths.pki / "ca.crt"))
    context.load_cert_chain(
        str(paths.pki / "admin-client.crt"), str(paths.pki / "admin-client.key")
    )
    url = f"https://{NODE_IP}:{API_PORT}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5, context=context) as resp:
            return json.loads(resp.read())
    except (OSError, urllib.error.URLError, ValueError):
        return None


def node_ready(paths: Paths) -> bool:
    node = api_get(paths, f"/api/v1/nodes/{NODE_NAME}")
    conditions = (node or {}).get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def usable(paths: Paths) -> bool:
    """A pod in `default` can be admitted: its ServiceAccount and the CA config map exist."""
    return all(
        api_get(paths, f"/api/v1/namespaces/default/{kind}") is not None
        for kind in ("serviceaccounts/default", "configmaps/kube-root-ca.crt")
    )


def _pod_pids() -> set[int]:
    """Every process in the pods' cgroups (kubelet's cgroupRoot): the containers' processes."""
    pids: set[int] = set()
    for mount in cgroup_mounts():
        root = mount / CGROUP_ROOT
        for procs in root.rglob("cgroup.procs") if root.is_dir() else ():
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(p) for p in procs.read_text().split())
    return pids


def sandbox_ids(paths: Paths) -> set[str]:
    """The pod sandboxes containerd's CRI made in this run directory (root or state)."""
    cri = "io.containerd.grpc.v1.cri"
    dirs = (
        paths.containerd / "root" / cri / "sandboxes",
        paths.containerd_state / cri / "sandboxes",
    )
    return {entry.name for d in dirs if d.is_dir() for entry in d.iterdir()}


def _task_dirs(paths: Paths) -> list[Path]:
    """containerd's bundle directories of our tasks (init.pid, address, ...)."""
    task_dir = paths.containerd_state / "io.containerd.runtime.v2.task" / "k8s.io"
    return sorted(task_dir.iterdir()) if task_dir.is_dir() else []


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _shims(paths: Paths) -> set[int]:
    """containerd's shims of our tasks: the parents of the init pids containerd recorded
    (containerd 1.6 writes no shim.pid), if they run with our socket as -address."""
    shims = set()
    for bundle in _task_dirs(paths):
        pid = localproc.read_pid(bundle / "init.pid")
        parent = _parent(pid) if pid else None
        if parent and str(paths.socket).encode() in localproc.cmdline(parent):
            shims.add(parent)
    return shims


def containers(paths: Paths) -> list[str]:
    """The pods' processes and containerd shims still running."""
    pods = [f"pod process {pid}" for pid in sorted(_pod_pids())]
    return pods + [f"containerd shim {pid}" for pid in sorted(_shims(paths))]


def _kill_and_wait(pids: set[int], deadline: float) -> None:
    while (alive := {p for p in pids if localproc.alive(p)}) and time.monotonic() < deadline:
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def stop_containers(paths: Paths, containerd_up: bool, timeout: float) -> None:
    """Kill and delete every task through containerd when it runs (the shims then exit);
    without containerd, SIGKILL the processes in the pods' cgroups and the shims found by
    the init pids containerd recorded, and remove the shims' sockets."""
    deadline = time.monotonic() + timeout
    if containerd_up:
        ids = ctr(paths, "tasks", "ls", "-q").stdout.split()
        if ids:
            ctr(paths, "tasks", "rm", "-f", *ids)
    shims = _shims(paths)  # before the pod processes, whose parents they are, are gone
    while (pids := _pod_pids()) and time.monotonic() < deadline:
        _kill_and_wait(pids, deadline)
    _kill_and_wait(shims, deadline)
    for bundle in _task_dirs(paths):
        with contextlib.suppress(OSError):  # "unix:///run/containerd/s/<hash>"
            address = (bundle / "address").read_text().strip().removeprefix("unix://")
            if address.startswith("/run/containerd/s/"):
                Path(address).unlink(missing_ok=True)
