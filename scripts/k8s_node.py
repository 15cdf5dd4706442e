#!/usr/bin/env python3
"""A real single-node Kubernetes cluster whose pods run, on a bridge of its own.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy (iptables) and a
kubelet over containerd + runc, all v1.34.4 built from Go modules (scripts/k8s_build.py), the
pause image built from Kubernetes' pause.c (scripts/k8s_images.py). The node IP is 10.217.0.1 on
the bridge mls-k8s0; pods get 10.217.0.0/24, Services 10.217.1.0/24; nothing routes off the
machine (scripts/k8s_host.py). Standard library only:

    python3 scripts/k8s_node.py build                  # the binaries (cached) and pause image
    python3 scripts/k8s_node.py up --dir run/k8s-node [--image ARCHIVE ...]
    python3 scripts/k8s_node.py status --dir run/k8s-node
    eval "$(python3 scripts/k8s_node.py env --dir run/k8s-node)"   # KUBECONFIG, PATH
    python3 scripts/k8s_node.py down --dir run/k8s-node

Importable by path (tests/support/k8s_node.py). Every process has a pid file in DIR and is
stopped by that pid; `down` also stops the pods' containers through containerd, unmounts what
was mounted under DIR and puts the host back (bridge, iptables, cgroups, sysctls).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
import k8s_host as host
import k8s_node_conf as conf
import k8s_pki as pki
import localproc
from k8s_build import K8S_VERSION, REPO_ROOT, K8sLocalError, bin_dir, binary, build
from k8s_images import ImageArchive, pause_image
from k8s_local import _etcd_argv, _Probe, _spawn, _wait_until, running_pid
from k8s_node_api import (
    ContainerdUp,
    containers,
    delete_tasks,
    import_images,
    kill_leftovers,
    node_ready,
    sandbox_ids,
    shim_pids,
    usable,
)
from localproc import free_port

DEFAULT_DIR = REPO_ROOT / "run" / "k8s-node"
UP_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 20.0
# Start order; `down` stops them in reverse (the pods' containers before containerd).
PROCESSES = (
    "etcd",
    "kube-apiserver",
    "containerd",
    "kube-controller-manager",
    "kube-scheduler",
    "kube-proxy",
    "kubelet",
)
BINARIES = ("etcd", "kube-apiserver", *(p for p in PROCESSES[3:]), "kubectl", "helm")
IDENTITIES = (
    pki.Identity("admin", "mailsluice-admin", "system:masters"),
    pki.Identity("kube-controller-manager", "system:kube-controller-manager"),
    pki.Identity("kube-scheduler", "system:kube-scheduler"),
    pki.Identity("kube-proxy", "system:kube-proxy"),
    pki.Identity("kubelet", f"system:node:{conf.NODE_NAME}", "system:nodes"),
)
VOLATILE = ("etcd-data", "containerd", "kubelet", "pod-logs", "cni")  # wiped by `down`


@dataclass(frozen=True)
class NodeState:
    """What DIR/cluster.json remembers about a running node cluster."""

    server: str
    kubeconfig: str
    node_name: str
    node_ip: str
    version: str
    bin_dir: str
    images: list[str]
    proxy_healthz: str


def read_state(directory: Path | str) -> NodeState | None:
    try:
        return NodeState(**json.loads((Path(directory) / "cluster.json").read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _write_state(directory: Path, state: NodeState) -> None:
    (directory / "cluster.json").write_text(json.dumps(asdict(state), indent=2) + "\n")


def build_all(procs: int | None = None, quiet: bool = False) -> Path:
    """The binaries (etcd, kube-apiserver, helm, kubelet, ..., kubectl) and the pause image."""
    out = build(procs=procs, quiet=quiet, kubectl=True, node=True)
    pause_image()
    return out


def _certificates(paths: conf.Paths) -> str:
    """The CA, serving and client certificates, SA keys and kubeconfigs; return the server."""
    tls = paths.pki
    names = ("kubernetes", "kubernetes.default", "kubernetes.default.svc")
    sans = (*(f"DNS:{n}" for n in (*names, "kubernetes.default.svc.cluster.local", "localhost")),)
    service_ip = host.SERVICE_CIDR.rsplit(".", 1)[0] + ".1"  # the `kubernetes` Service
    sans += (f"IP:{host.NODE_IP}", "IP:127.0.0.1", f"IP:{service_ip}")
    pki.issue(tls, "apiserver", "/CN=kube-apiserver", server=True, sans=sans)
    node_sans = (f"DNS:{conf.NODE_NAME}", f"IP:{host.NODE_IP}")
    pki.issue(tls, "kubelet-serving", f"/CN={conf.NODE_NAME}", server=True, sans=node_sans)
    # The apiserver's identity towards the kubelet (logs, exec, port-forward).
    pki.client_cert(tls, pki.Identity("apiserver-kubelet", "kube-apiserver", "system:masters"))
    pki.service_account_keys(tls)
    server = f"https://{host.NODE_IP}:{conf.API_PORT}"
    for who in IDENTITIES:
        pki.write_kubeconfig(paths.kubeconfig(who.name), server, tls, who)
    return server


def _prepare(paths: conf.Paths, ports: dict[str, int]) -> str:
    """Host network, cgroup, certificates, kubeconfigs and config files; return the server."""
    paths.root.mkdir(parents=True, exist_ok=True)
    host.save_host_state(paths.root)
    host.bridge_up(paths.root)
    cgroup_root = host.cgroup_root_up()
    server = _certificates(paths)
    host.write_cni_config(paths.cni_conf, paths.cni_ipam)
    paths.containerd.mkdir(parents=True, exist_ok=True)
    config = conf.containerd_config(paths, pause_image().ref)
    (paths.containerd / "config.toml").write_text(config)
    kubelet = conf.kubelet_config(paths, ports["kubelet-healthz"], cgroup_root)
    (paths.root / "kubelet.yaml").write_text(kubelet)
    proxy = conf.kube_proxy_config(paths, ports["proxy-healthz"], ports["proxy-metrics"])
    (paths.root / "kube-proxy.yaml").write_text(proxy)
    return server


def _start_control_plane(paths: conf.Paths, timeout: float) -> None:
    """etcd, then kube-apiserver; containerd starts meanwhile (it needs neither)."""
    directory = paths.root
    client_port, peer_port = free_port(), free_port()
    etcd_url = f"http://127.0.0.1:{client_port}"
    etcd_pid = _spawn(directory, "etcd", _etcd_argv(directory, client_port, peer_port))
    ctr_pid = _spawn(directory, "containerd", conf.containerd_argv(paths))
    health = _Probe(f"{etcd_url}/health", expect=b'"health":"true"')
    _wait_until(directory, "etcd", etcd_pid, health, timeout=timeout, what="healthy")
    api_pid = _spawn(directory, "kube-apiserver", conf.apiserver_argv(paths, etcd_url))
    _wait_until(directory, "containerd", ctr_pid, ContainerdUp(paths), timeout=timeout, what="up")
    ready = _Probe(f"https://{host.NODE_IP}:{conf.API_PORT}/readyz", expect=b"ok")
    _wait_until(directory, "kube-apiserver", api_pid, ready, timeout=timeout, what="ready")


def _start_node(paths: conf.Paths, ports: dict[str, int], timeout: float) -> None:
    directory = paths.root
    kcm_argv = conf.controller_manager_argv(paths, ports["kcm"])
    kcm_pid = _spawn(directory, "kube-controller-manager", kcm_argv)
    _spawn(directory, "kube-scheduler", conf.scheduler_argv(paths, ports["scheduler"]))
    proxy_pid = _spawn(directory, "kube-proxy", conf.kube_proxy_argv(paths))
    kubelet_pid = _spawn(directory, "kubelet", conf.kubelet_argv(paths))
    _wait_until(
        directory, "kubelet", kubelet_pid, lambda: node_ready(paths), timeout=timeout,
        what="Ready (node)",
    )  # fmt: skip
    proxy = _Probe(f"http://127.0.0.1:{ports['proxy-healthz']}/healthz")
    _wait_until(directory, "kube-proxy", proxy_pid, proxy, timeout=timeout, what="synced")
    # Pods need the default ServiceAccount and kube-root-ca.crt, which the controller manager
    # makes: wait for them, so a test's first pod is not refused.
    _wait_until(
        directory, "kube-controller-manager", kcm_pid, lambda: usable(paths), timeout=timeout,
        what="serving the default namespace",
    )  # fmt: skip


def up(
    directory: Path | str = DEFAULT_DIR,
    images: Sequence[Path | str | ImageArchive] = (),
    timeout: float = UP_TIMEOUT_S,
) -> NodeState:
    """Start the node cluster with state in DIR and wait until a pod can be created and run;
    import `images` (OCI archives) into containerd first. A cluster already running from DIR
    is reused (the images are imported into it)."""
    directory = Path(directory).resolve()
    paths = conf.Paths(directory)
    archives = [i.path if isinstance(i, ImageArchive) else Path(i) for i in images]
    state = read_state(directory)
    if state and all(running_pid(directory, name) for name in PROCESSES):
        added = import_images(directory, archives)
        state = NodeState(**{**asdict(state), "images": sorted({*state.images, *added})})
        _write_state(directory, state)
        return state
    down(directory)  # half-started leftovers
    owner = host.bridge_owner()
    if owner and not any(running_pid(Path(owner), name) for name in PROCESSES):
        down(owner)  # another directory's cluster whose processes are gone (a killed pytest)
    missing = [name for name in BINARIES if not binary(name).exists()]
    if missing:
        raise K8sLocalError(f"missing {missing} in {bin_dir()}: run `scripts/k8s_node.py build`")
    ports = {n: free_port() for n in ("kubelet-healthz", "proxy-healthz", "proxy-metrics")}
    ports.update(kcm=free_port(), scheduler=free_port())
    try:
        server = _prepare(paths, ports)
        _start_control_plane(paths, timeout)
        refs = import_images(directory, [pause_image().path, *archives])
        _start_node(paths, ports, timeout)
    except BaseException:
        down(directory)
        raise
    state = NodeState(
        server=server,
        kubeconfig=str(paths.kubeconfig("admin")),
        node_name=conf.NODE_NAME,
        node_ip=host.NODE_IP,
        version=K8S_VERSION,
        bin_dir=str(bin_dir()),
        images=sorted(set(refs)),
        proxy_healthz=f"http://127.0.0.1:{ports['proxy-healthz']}/healthz",
    )
    _write_state(directory, state)
    return state


def _stop(directory: Path, name: str, timeout: float) -> bool:
    return localproc.stop(
        directory / f"{name}.pid", lambda pid: running_pid(directory, name) == pid, timeout
    )


def down(directory: Path | str = DEFAULT_DIR, timeout: float = STOP_TIMEOUT_S) -> bool:
    """Stop everything in reverse order (the pods' containers before containerd), unmount
    what is mounted under DIR, remove the bridge, iptables chains, cgroups and the volatile
    state, restore the sysctls. True if anything was running."""
    directory = Path(directory).resolve()
    paths = conf.Paths(directory)
    shims = shim_pids(paths)  # while containerd's records and the pods' processes are there
    stopped = [_stop(directory, name, timeout) for name in reversed(PROCESSES[3:])]
    if running_pid(directory, "containerd"):
        delete_tasks(paths)
    stopped.append(_stop(directory, "containerd", timeout))
    kill_leftovers(paths, shims, timeout)  # whatever containerd left: by the pids it recorded
    stopped += [_stop(directory, name, timeout) for name in ("kube-apiserver", "etcd")]
    _clean_host(paths)
    (directory / "cluster.json").unlink(missing_ok=True)
    return any(stopped)


def _clean_host(paths: conf.Paths) -> None:
    # Host-wide leftovers (chains, bridge, cgroups) only when no other run directory's cluster
    # holds the bridge: a `down` of another directory must not touch a live cluster.
    owner = host.bridge_owner()
    ours = owner in (None, str(paths.root))
    if ours:
        kube_proxy = binary("kube-proxy")
        if kube_proxy.exists():
            # kube-proxy's own cleanup of its iptables (and ipvs/nftables) rules.
            subprocess.run([str(kube_proxy), "--cleanup"], capture_output=True, check=False)
        host.iptables_sweep()
        host.remove_cni_cache(sandbox_ids(paths))
        host.bridge_down()
    remaining = host.unmount_under(paths.root)
    host.remove_container_log_links(paths.pod_logs)
    busy = host.cgroup_root_down() if ours else []
    host.restore_host_state(paths.root)
    if remaining or busy:
        raise K8sLocalError(f"left behind: mounts {remaining}, cgroups {busy}")
    for name in VOLATILE:
        shutil.rmtree(paths.root / name, ignore_errors=True)


def leftovers(directory: Path | str = DEFAULT_DIR) -> dict[str, list[str]]:
    """What of a node cluster is still on the host (empty lists after a clean `down`)."""
    directory = Path(directory).resolve()
    paths = conf.Paths(directory)
    procs = [f"{n} {p}" for n in PROCESSES if (p := running_pid(directory, n))]
    saved = [
        subprocess.run([save], capture_output=True, text=True, check=False).stdout
        for save in ("iptables-save", "ip6tables-save")
    ]
    iptables = [line for text in saved for line in text.splitlines() if "KUBE-" in line]
    cgroups = [str(m / host.CGROUP_ROOT) for m in host.cgroup_mounts()]
    return {
        "processes": procs + containers(paths),
        "mounts": host.mounts_under(directory),
        "bridge": [host.BRIDGE] if host.bridge_owner() is not None else [],
        "iptables": iptables,
        "cgroups": [c for c in cgroups if Path(c).exists()],
    }


def status(directory: Path | str = DEFAULT_DIR) -> dict[str, object]:
    directory = Path(directory).resolve()
    state = read_state(directory)
    result: dict[str, object] = {name: running_pid(directory, name) for name in PROCESSES}
    result["ready"] = bool(state and node_ready(conf.Paths(directory)))
    if state:
        result.update(asdict(state))
    return result


@contextlib.contextmanager
def running(
    directory: Path | str = DEFAULT_DIR, images: Sequence[Path | str | ImageArchive] = ()
) -> Iterator[NodeState]:
    """Context manager: up() on entry, down() on exit."""
    state = up(directory, images)
    try:
        yield state
    finally:
        down(directory)


def env_lines(directory: Path | str) -> list[str]:
    paths = conf.Paths(Path(directory).resolve())
    return [
        f"export KUBECONFIG={paths.kubeconfig('admin')}",
        f"export KUBECACHEDIR={paths.root / 'kubectl-cache'}",  # not ~/.kube/cache
        f'export PATH="{bin_dir()}:$PATH"',
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)
    p_build = sub.add_parser("build", help="build all binaries and the pause image (cached)")
    p_build.add_argument("--procs", type=int, default=None, help="go build -p (default: Go's)")
    for name, text in (
        ("up", "start the cluster, wait until the node is Ready and pods can be created"),
        ("down", "stop it by pid and put the host back"),
        ("status", "print pids and readiness as JSON"),
        ("env", "print `export KUBECONFIG=...` and PATH (kubectl, helm)"),
        ("leftovers", "print what of the cluster remains on the host, as JSON"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"state dir ({DEFAULT_DIR})")
        if name == "up":
            p.add_argument("--timeout", type=float, default=UP_TIMEOUT_S)
            p.add_argument("--image", action="append", default=[], help="OCI archive to import")
    args = parser.parse_args(argv)
    try:
        return _command(args)
    except K8sLocalError as exc:
        print(f"k8s_node: {exc}", file=sys.stderr)
        return 1


def _command(args: argparse.Namespace) -> int:
    started = time.monotonic()
    if args.command == "build":
        print(build_all(procs=args.procs))
    elif args.command == "up":
        state = up(args.dir, args.image, timeout=args.timeout)
        print(f"node {state.node_name} Ready ({state.version}, {state.server}) in ", end="")
        print(f"{time.monotonic() - started:.1f}s; KUBECONFIG={state.kubeconfig}")
    elif args.command == "down":
        was = down(args.dir)
        print(f"{'stopped' if was else 'not running'} in {time.monotonic() - started:.1f}s")
    elif args.command == "status":
        result = status(args.dir)
        print(json.dumps(result, indent=2))
        return 0 if result["ready"] else 1
    elif args.command == "env":
        print("\n".join(env_lines(args.dir)))
    elif args.command == "leftovers":
        found = leftovers(args.dir)
        print(json.dumps(found, indent=2))
        return 1 if any(found.values()) else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
