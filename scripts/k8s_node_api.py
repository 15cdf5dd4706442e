"""The node cluster (scripts/k8s_node.py) through its own eyes: containerd (image import,
tasks), the API as its admin, and the pods' processes and containerd shims as containerd's
records and the cgroups know them. Standard library only.
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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import localproc
from k8s_build import K8sLocalError
from k8s_host import CGROUP_ROOT, NODE_IP, cgroup_mounts
from k8s_node_conf import API_PORT, NODE_NAME, Paths


def ctr(paths: Paths, *args: str) -> subprocess.CompletedProcess[str]:
    """containerd's own client on our socket, in the CRI's namespace."""
    argv = ["ctr", "--address", str(paths.socket), "--namespace", "k8s.io", *args]
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300)


def import_images(directory: Path | str, archives: Sequence[Path | str]) -> list[str]:
    """`ctr images import` each OCI/docker archive into the node's containerd; return the
    references imported (the name in the archive: io.containerd.image.name or a full
    org.opencontainers.image.ref.name). Works on a running cluster too."""
    paths = Paths(Path(directory).resolve())
    refs: list[str] = []
    for archive in archives:
        proc = ctr(paths, "images", "import", str(Path(archive).resolve()))
        if proc.returncode != 0:
            raise K8sLocalError(f"ctr images import {archive} failed:\n{proc.stderr}")
        for line in proc.stdout.splitlines():  # "unpacking NAME (sha256:...)...done"
            if line.startswith("unpacking "):
                refs.append(line.split()[1])
    return refs


class ContainerdUp:
    """A readiness probe: containerd answers on our socket."""

    def __init__(self, paths: Paths) -> None:
        self.paths = paths

    def __call__(self) -> bool:
        return self.paths.socket.exists() and ctr(self.paths, "version").returncode == 0


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


def _shim_sockets(paths: Paths) -> set[str]:
    """The shims' sockets containerd recorded in the bundles ("unix:///run/containerd/s/...")."""
    sockets = set()
    for bundle in _task_dirs(paths):
        with contextlib.suppress(OSError):
            sockets.add((bundle / "address").read_text().strip().removeprefix("unix://"))
    return sockets


def _socket_holders(sockets: set[str]) -> set[int]:
    """Pids with one of these listening unix sockets open (by inode, /proc/net/unix)."""
    inodes = set()
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[7] in sockets:
            inodes.add(f"socket:[{fields[6]}]")
    holders = set()
    for fd_dir in Path("/proc").glob("[0-9]*/fd") if inodes else ():
        with contextlib.suppress(OSError):
            if any(os.readlink(fd) in inodes for fd in fd_dir.iterdir()):
                holders.add(int(fd_dir.parent.name))
    return holders


def shim_pids(paths: Paths) -> set[int]:
    """containerd's shims of our tasks (containerd 1.6 writes no shim.pid): the parents of the
    init pids and the holders of the shim sockets it recorded, if -address is our socket."""
    found = set(_socket_holders(_shim_sockets(paths)))
    for bundle in _task_dirs(paths):
        pid = localproc.read_pid(bundle / "init.pid")
        parent = _parent(pid) if pid else None
        if parent:
            found.add(parent)
    return {pid for pid in found if _our_shim(paths, pid)}


def _our_shim(paths: Paths, pid: int) -> bool:
    argv = localproc.cmdline(pid)
    return b"-address" in argv and str(paths.socket).encode() in argv


def orphan_shims(paths: Paths) -> list[int]:
    """Shims still running with our socket as -address, found by their command line: only to
    report them (a shim whose bundle is gone has no recorded pid left); never to kill."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError, ValueError):
            pid = int(cmdline.parent.name)
            if _our_shim(paths, pid):
                found.append(pid)
    return sorted(found)


def containers(paths: Paths) -> list[str]:
    """The pods' processes and containerd shims still running."""
    pods = [f"pod process {pid}" for pid in sorted(_pod_pids())]
    return pods + [f"containerd shim {pid}" for pid in orphan_shims(paths)]


def _kill_and_wait(pids: set[int], deadline: float) -> None:
    while (alive := {p for p in pids if localproc.alive(p)}) and time.monotonic() < deadline:
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def delete_tasks(paths: Paths) -> None:
    """Kill and delete every task through containerd (it runs)."""
    ids = ctr(paths, "tasks", "ls", "-q").stdout.split()
    if ids:
        ctr(paths, "tasks", "rm", "-f", *ids)


def kill_leftovers(paths: Paths, shims: set[int], timeout: float) -> None:
    """After containerd: SIGKILL what is left in the pods' cgroups, then the shims (pids found
    while containerd's records were there, still checked to be ours), and remove the shims'
    sockets."""
    deadline = time.monotonic() + timeout
    while (pids := _pod_pids()) and time.monotonic() < deadline:
        _kill_and_wait(pids, deadline)
    _kill_and_wait({pid for pid in shims | shim_pids(paths) if _our_shim(paths, pid)}, deadline)
    for address in _shim_sockets(paths):
        if address.startswith("/run/containerd/s/"):
            Path(address).unlink(missing_ok=True)
