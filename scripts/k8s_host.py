"""What the node cluster (scripts/k8s_node.py) changes on the host, and how it is put back.

- a Linux bridge with the node IP, forwarding enabled on that bridge only (not ip_forward);
- a CNI network (bridge + host-local) whose pods route only the pod and service ranges, so no
  pod packet has a way off the machine; no masquerade;
- the sysctls kubelet and kube-proxy set (saved in DIR/host.json before, restored after);
- a cgroup under every v1 hierarchy for the pods (kubelet's cgroupRoot);
- iptables chains (kube-proxy's and the kubelet's KUBE-* chains, v4 and v6);
- mounts under DIR (netns, shm, rootfs, volumes), /var/log/containers links, /var/lib/cni cache.

Standard library only.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
from pathlib import Path

from k8s_build import K8sLocalError

BRIDGE = "mls-k8s0"
NODE_IP = "10.217.0.1"
POD_CIDR = "10.217.0.0/24"
SERVICE_CIDR = "10.217.1.0/24"
CNI_NETWORK = "mailsluice-node"
CGROUP_ROOT = "mailsluice-node"
CNI_CACHE = Path("/var/lib/cni")
CONTAINER_LOGS = Path("/var/log/containers")  # the kubelet's hard-coded link directory
SHIM_SOCKETS = Path("/run/containerd")  # containerd 1.6 puts shim sockets in /run/containerd/s
# The kubelet's device-plugin socket has a fixed path (deviceplugin/v1beta1.KubeletSocket).
KUBELET_SOCKET = Path("/var/lib/kubelet/device-plugins/kubelet.sock")
SHARED_DIRS = (CNI_CACHE, CONTAINER_LOGS, SHIM_SOCKETS, Path("/var/lib/kubelet"))
# kubelet sets the first four (setupKernelTunables); kube-proxy would set the others, which its
# configuration here asks it not to; saved and restored all the same.
SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/route_localnet",
    "net/netfilter/nf_conntrack_max",
    "net/netfilter/nf_conntrack_tcp_timeout_established",
    "net/netfilter/nf_conntrack_tcp_timeout_close_wait",
)


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise K8sLocalError(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
    return proc


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name


def save_host_state(directory: Path) -> None:
    """Remember the sysctls and which shared directories existed (first `up` only)."""
    path = directory / "host.json"
    if path.exists():
        return  # a restarted `up` keeps what the host looked like before the first one
    values = {}
    for name in SYSCTLS:
        with contextlib.suppress(OSError):
            values[name] = _sysctl_path(name).read_text().strip()
    existed = {str(p): p.exists() for p in SHARED_DIRS}
    path.write_text(json.dumps({"sysctls": values, "existed": existed}, indent=2) + "\n")


def restore_host_state(directory: Path) -> None:
    path = directory / "host.json"
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    for name, value in saved["sysctls"].items():
        with contextlib.suppress(OSError):
            if _sysctl_path(name).read_text().strip() != value:
                _sysctl_path(name).write_text(value + "\n")
    if KUBELET_SOCKET.is_socket():
        KUBELET_SOCKET.unlink()  # the kubelet leaves it behind
    for name, existed in saved["existed"].items():
        if not existed:
            _remove_empty_tree(Path(name))
    path.unlink()


def _remove_empty_tree(root: Path) -> None:
    if not root.is_dir():
        return
    for sub in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            sub.rmdir()
    with contextlib.suppress(OSError):
        root.rmdir()


def bridge_owner() -> str | None:
    """The run directory that made the bridge (kept in its alias), or None without a bridge."""
    try:
        return Path(f"/sys/class/net/{BRIDGE}/ifalias").read_text().strip()
    except OSError:
        return None


def bridge_up(directory: Path) -> None:
    """Create the bridge with the node IP (idempotent for the same run directory)."""
    owner = bridge_owner()
    if owner is not None and owner != str(directory):
        raise K8sLocalError(f"{BRIDGE} belongs to another node cluster ({owner}); `down` it first")
    if owner is None:
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
        _run("ip", "link", "set", BRIDGE, "alias", str(directory))
        _run("ip", "addr", "add", f"{NODE_IP}/24", "dev", BRIDGE)
    _run("ip", "link", "set", BRIDGE, "up")
    # Service traffic from a pod to another pod is routed back into the bridge: forwarding on
    # this interface only (IPv4 decides by the input device), the host's ip_forward stays as is.
    _sysctl_path(f"net/ipv4/conf/{BRIDGE}/forwarding").write_text("1\n")


def bridge_down() -> None:
    """Delete the veths still on the bridge, then the bridge."""
    if bridge_owner() is None:
        return
    links = _run("ip", "-o", "link", "show", "master", BRIDGE, check=False).stdout
    for line in links.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        _run("ip", "link", "del", name, check=False)
    _run("ip", "link", "del", BRIDGE)


def write_cni_config(conf_dir: Path, ipam_dir: Path) -> None:
    """One bridge network; pods get routes to the pod and service ranges only (no default)."""
    conf_dir.mkdir(parents=True, exist_ok=True)
    ipam = {
        "type": "host-local",
        "dataDir": str(ipam_dir),
        "ranges": [[{"subnet": POD_CIDR, "rangeStart": "10.217.0.16", "gateway": NODE_IP}]],
        "routes": [{"dst": SERVICE_CIDR, "gw": NODE_IP}],
    }
    bridge = {
        "type": "bridge",
        "bridge": BRIDGE,
        "isGateway": False,  # True would switch the host's ip_forward on; the bridge has its IP
        "ipMasq": False,
        "hairpinMode": True,  # a pod reaching itself through a Service
        "ipam": ipam,
    }
    conf = {"cniVersion": "1.0.0", "name": CNI_NETWORK, "plugins": [bridge]}
    (conf_dir / "10-mailsluice.conflist").write_text(json.dumps(conf, indent=2) + "\n")


def remove_cni_cache(sandbox_ids: set[str]) -> None:
    """libcni's result cache (containerd's CRI keeps it in /var/lib/cni): the entries of our
    network and of the loopback one, for our pod sandboxes (files <network>-<sandbox>-<if>)."""
    results = CNI_CACHE / "results"
    if results.is_dir():
        for entry in results.iterdir():
            if entry.name.startswith(f"{CNI_NETWORK}-") or any(
                f"-{sandbox}-" in entry.name for sandbox in sandbox_ids
            ):
                entry.unlink(missing_ok=True)


def cgroup_mounts() -> list[Path]:
    """Mount points of the cgroup hierarchies (v1 controllers and the unified one)."""
    points = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if fields[2] in ("cgroup", "cgroup2"):
            points.append(Path(_unescape(fields[1])))
    return points


def cgroup_root_up() -> str:
    """Create /<CGROUP_ROOT> in every hierarchy (the kubelet wants its cgroupRoot to exist)."""
    for mount in cgroup_mounts():
        path = mount / CGROUP_ROOT
        path.mkdir(exist_ok=True)
        for name in ("cpuset.cpus", "cpuset.mems"):  # a new v1 cpuset starts empty
            if (path / name).exists() and not (path / name).read_text().strip():
                (path / name).write_text((mount / name).read_text())
    return f"/{CGROUP_ROOT}"


def cgroup_root_down() -> list[str]:
    """Remove the pod cgroups, deepest first; return those still busy."""
    busy = []
    for mount in cgroup_mounts():
        root = mount / CGROUP_ROOT
        if not root.is_dir():
            continue
        dirs = [p for p in root.rglob("*") if p.is_dir()]
        for path in [*sorted(dirs, key=lambda p: len(p.parts), reverse=True), root]:
            try:
                path.rmdir()
            except OSError:
                busy.append(str(path))
    return busy


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounts_under(directory: Path) -> list[str]:
    """Mount points at or below directory, deepest (last mounted) first."""
    prefix = str(directory).rstrip("/") + "/"
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = _unescape(line.split()[4])
        if point.startswith(prefix) or point == str(directory):
            found.append(point)
    return list(reversed(found))


def unmount_under(directory: Path) -> list[str]:
    """Unmount everything below directory; return what is still mounted."""
    for point in mounts_under(directory):
        if _run("umount", point, check=False).returncode != 0:
            _run("umount", "-l", point, check=False)  # busy: detach, the kernel frees it later
    return mounts_under(directory)


def remove_container_log_links(pod_logs: Path) -> None:
    """The kubelet's /var/log/containers links into our pod log directory."""
    if not CONTAINER_LOGS.is_dir():
        return
    for link in CONTAINER_LOGS.iterdir():
        if link.is_symlink() and os.readlink(link).startswith(str(pod_logs) + "/"):
            link.unlink()


def _kube_rules(save: str) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Per table: our KUBE-* chains, and the rules of other chains that jump to them."""
    chains: dict[str, list[str]] = {}
    jumps: dict[str, list[str]] = {}
    table = ""
    for line in save.splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith(":KUBE-"):
            chains.setdefault(table, []).append(line[1:].split()[0])
        elif re.match(r"-A (?!KUBE-)\S+( .*)? -[jg] KUBE-", line):
            jumps.setdefault(table, []).append(line)
    return chains, jumps


def iptables_sweep() -> list[str]:
    """Delete every KUBE-* chain and the jumps into it (IPv4 and IPv6); return what remains."""
    left = []
    for family in ("iptables", "ip6tables"):
        save = _run(f"{family}-save", check=False).stdout
        chains, jumps = _kube_rules(save)
        script = []
        for table in sorted(set(chains) | set(jumps)):
            script.append(f"*{table}")
            script += [f":{chain} - [0:0]" for chain in chains.get(table, [])]  # = flush
            script += ["-D " + rule[3:] for rule in jumps.get(table, [])]  # same quoting
            script += [f"-X {chain}" for chain in chains.get(table, [])]
            script.append("COMMIT")
        if script:
            proc = subprocess.run(
                [f"{family}-restore", "--noflush"],
                input="\n".join(script) + "\n",
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                left.append(f"{family}-restore: {proc.stderr.strip()}")
        remaining, _ = _kube_rules(_run(f"{family}-save", check=False).stdout)
        left += [f"{family} {t} {c}" for t, chains_ in remaining.items() for c in chains_]
    return left


def host_snapshot() -> dict[str, object]:
    """What a cluster touches on the host outside its run directory, read-only: links, routes,
    iptables rules and KUBE-* chains, sysctls, shared directories, top-level cgroups. Equal
    before `up` and after `down` when the host was left as found (mounts under the run
    directory: mounts_under)."""
    rules = []
    for family in ("iptables-save", "ip6tables-save"):
        text = _run(family, check=False).stdout
        # Built-in chains and empty tables do not count: iptables-nft creates them on first use.
        rules += [x for x in text.splitlines() if x.startswith("-A") or x.startswith(":KUBE-")]
    links = _run("ip", "-o", "link", "show", check=False).stdout.splitlines()
    return {
        "links": sorted(line.split(":")[1].strip().split("@")[0] for line in links),
        "routes": sorted(
            _run("ip", "route", "show", "table", "all", check=False).stdout.splitlines()
        ),
        "iptables": rules,
        "sysctls": {name: _sysctl_path(name).read_text().strip() for name in SYSCTLS},
        "dirs": {str(p): p.exists() for p in SHARED_DIRS},
        "cgroups": sorted(
            str(m / c.name) for m in cgroup_mounts() for c in m.iterdir() if c.is_dir()
        ),
    }
