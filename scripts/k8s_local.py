#!/usr/bin/env python3
"""Run a real etcd and kube-apiserver on 127.0.0.1 for tests (no kubelet, no controllers).

The binaries (etcd, kube-apiserver and helm) are built from Go modules through the private tools
module in scripts/k8s and cached in <repo>/.cache/k8s/<versions>/bin; scripts/k8s_build.py does
that part. Standard library only:

    python3 scripts/k8s_local.py build [--procs N] [--kubectl]
    python3 scripts/k8s_local.py up --dir run/k8s
    python3 scripts/k8s_local.py status --dir run/k8s
    eval "$(python3 scripts/k8s_local.py env --dir run/k8s)"   # KUBECONFIG, PATH (kubectl, helm)
    python3 scripts/k8s_local.py down --dir run/k8s

The functions are importable too (tests/support/k8s_cluster.py uses them). Processes are found by
the pids in DIR/etcd.pid and DIR/kube-apiserver.pid, never by name.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

# Run as a script or loaded by path (tests/support/k8s_cluster.py): either way localproc and
# k8s_build are sibling files, not installed modules.
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
import localproc
from k8s_build import (
    CACHE_ROOT,
    ETCD_PACKAGE,
    ETCD_VERSION,
    HELM_PACKAGE,
    HELM_VERSION,
    K8S_PACKAGE,
    K8S_VERSION,
    KUBECTL_PACKAGE,
    REPO_ROOT,
    TOOLS_MODULE,
    K8sLocalError,
    bin_dir,
    binary,
    build,
)
from localproc import free_port

# The Go build (binaries, versions, cache) lives in k8s_build; its names are re-exported here
# because tests/support/k8s_cluster.py and `k8s_local.py build` reach them through this module.
__all__ = [
    "CACHE_ROOT",
    "DEFAULT_DIR",
    "ETCD_PACKAGE",
    "ETCD_VERSION",
    "HELM_PACKAGE",
    "HELM_VERSION",
    "K8S_PACKAGE",
    "K8S_VERSION",
    "KUBECTL_PACKAGE",
    "PROCESSES",
    "REPO_ROOT",
    "TOOLS_MODULE",
    "ClusterState",
    "K8sLocalError",
    "bin_dir",
    "binary",
    "build",
    "down",
    "kubeconfig_text",
    "main",
    "read_pid",
    "read_state",
    "running",
    "running_pid",
    "status",
    "up",
]

DEFAULT_DIR = REPO_ROOT / "run" / "k8s"
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 20.0
SERVICE_CIDR = "10.0.0.0/24"  # a config value only: nothing routes there
PROCESSES = ("kube-apiserver", "etcd")  # stop order


@dataclass(frozen=True)
class ClusterState:
    """What DIR/cluster.json remembers about a running control plane."""

    server: str
    kubeconfig: str
    token: str
    etcd_url: str
    version: str


def _pid_file(directory: Path, name: str) -> Path:
    return directory / f"{name}.pid"


def read_pid(directory: Path, name: str) -> int | None:
    return localproc.read_pid(_pid_file(directory, name))


def _is_ours(pid: int, name: str) -> bool:
    """The pid still runs our cached binary (guards against a reused pid)."""
    argv0 = localproc.cmdline(pid)[:1]
    return bool(argv0) and Path(argv0[0].decode()).name == name


def running_pid(directory: Path, name: str) -> int | None:
    return localproc.running_pid(_pid_file(directory, name), lambda pid: _is_ours(pid, name))


def read_state(directory: Path | str) -> ClusterState | None:
    try:
        data = json.loads((Path(directory) / "cluster.json").read_text())
        return ClusterState(**data)
    except (OSError, ValueError, TypeError):
        return None


def _spawn(directory: Path, name: str, argv: list[str]) -> int:
    log = directory / f"{name}.log"
    return localproc.spawn(argv, log, _pid_file(directory, name), directory).pid


def _log_tail(directory: Path, name: str, lines: int = 30) -> str:
    try:
        return "\n".join(
            (directory / f"{name}.log").read_text(errors="replace").splitlines()[-lines:]
        )
    except OSError:
        return "(no log)"


def _wait_until(
    directory: Path, name: str, pid: int, probe: Callable[[], bool], *, timeout: float, what: str
) -> None:
    outcome = localproc.wait_ready(pid, probe, timeout)
    if outcome == "exited":
        raise K8sLocalError(f"{name} exited during start:\n{_log_tail(directory, name)}")
    if outcome == "timeout":
        raise K8sLocalError(
            f"{name} not {what} after {timeout:.0f}s:\n{_log_tail(directory, name)}"
        )


class _Probe:
    def __init__(self, url: str, token: str | None = None, expect: bytes = b"") -> None:
        self.url, self.token, self.expect = url, token, expect
        self.context = ssl.create_default_context()
        self.context.check_hostname = False
        self.context.verify_mode = ssl.CERT_NONE  # self-signed serving cert on loopback

    def __call__(self) -> bool:
        request = urllib.request.Request(self.url)
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=2, context=self.context) as resp:
                return bool(resp.status == 200 and self.expect in resp.read())
        except (OSError, urllib.error.URLError):
            return False


def _service_account_key(directory: Path) -> Path:
    key = directory / "sa.key"
    if not key.exists():
        openssl = shutil.which("openssl")
        if not openssl:
            raise K8sLocalError("openssl not found (Debian package 'openssl')")
        subprocess.run(
            [openssl, "genrsa", "-out", str(key), "2048"], check=True, capture_output=True
        )
    return key


def kubeconfig_text(server: str, token: str) -> str:
    return f"""apiVersion: v1
kind: Config
clusters:
- name: mailsluice-test
  cluster:
    server: {server}
    insecure-skip-tls-verify: true
users:
- name: admin
  user:
    token: {token}
contexts:
- name: mailsluice-test
  context:
    cluster: mailsluice-test
    user: admin
    namespace: default
current-context: mailsluice-test
"""


def _etcd_argv(directory: Path, client_port: int, peer_port: int) -> list[str]:
    client = f"http://127.0.0.1:{client_port}"
    peer = f"http://127.0.0.1:{peer_port}"
    return [
        str(binary("etcd")),
        "--name=mailsluice-test",
        f"--data-dir={directory / 'etcd-data'}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=mailsluice-test={peer}",
        "--unsafe-no-fsync=true",  # test data only: fsync dominates start and write latency
        "--log-level=warn",
    ]


def _apiserver_argv(directory: Path, etcd_url: str, port: int, token_file: Path) -> list[str]:
    key = _service_account_key(directory)
    return [
        str(binary("kube-apiserver")),
        f"--etcd-servers={etcd_url}",
        f"--secure-port={port}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--cert-dir={directory / 'certs'}",  # self-signed serving cert generated there
        "--authorization-mode=RBAC",
        f"--service-account-issuer=https://127.0.0.1:{port}",
        f"--service-account-key-file={key}",
        f"--service-account-signing-key-file={key}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        f"--token-auth-file={token_file}",
        "--disable-admission-plugins=ServiceAccount",
        "--allow-privileged=true",
        "--profiling=false",
    ]


def up(directory: Path | str = DEFAULT_DIR, timeout: float = READY_TIMEOUT_S) -> ClusterState:
    """Start etcd and kube-apiserver with state in DIR; wait for /readyz; write DIR/kubeconfig.

    Needs the binaries (run build() first). A control plane already running from DIR is reused.
    """
    directory = Path(directory).resolve()
    state = read_state(directory)
    if state and all(running_pid(directory, name) for name in PROCESSES):
        return state
    down(directory)  # half-started leftovers
    for name in PROCESSES:
        if not binary(name).exists():
            raise K8sLocalError(f"{binary(name)} missing: run `scripts/k8s_local.py build`")
    directory.mkdir(parents=True, exist_ok=True)
    client_port, peer_port, api_port = free_port(), free_port(), free_port()
    etcd_url = f"http://127.0.0.1:{client_port}"
    etcd_pid = _spawn(directory, "etcd", _etcd_argv(directory, client_port, peer_port))
    try:
        probe = _Probe(f"{etcd_url}/health", expect=b'"health":"true"')
        _wait_until(directory, "etcd", etcd_pid, probe, timeout=timeout, what="healthy")
        token = secrets.token_hex(16)
        token_file = directory / "tokens.csv"
        token_file.write_text(f'{token},admin,1,"system:masters"\n')
        token_file.chmod(0o600)
        server = f"https://127.0.0.1:{api_port}"
        argv = _apiserver_argv(directory, etcd_url, api_port, token_file)
        api_pid = _spawn(directory, "kube-apiserver", argv)
        ready = _Probe(f"{server}/readyz", token=token, expect=b"ok")
        _wait_until(directory, "kube-apiserver", api_pid, ready, timeout=timeout, what="ready")
    except BaseException:
        down(directory)
        raise
    kubeconfig = directory / "kubeconfig"
    kubeconfig.write_text(kubeconfig_text(server, token))
    kubeconfig.chmod(0o600)
    state = ClusterState(str(server), str(kubeconfig), token, etcd_url, K8S_VERSION)
    (directory / "cluster.json").write_text(json.dumps(asdict(state), indent=2) + "\n")
    return state


def _stop_pid(directory: Path, name: str, timeout: float) -> bool:
    return localproc.stop(_pid_file(directory, name), lambda pid: _is_ours(pid, name), timeout)


def down(directory: Path | str = DEFAULT_DIR, timeout: float = STOP_TIMEOUT_S) -> bool:
    """Stop kube-apiserver, then etcd, by their pid files. True if anything was running."""
    directory = Path(directory).resolve()
    stopped = [_stop_pid(directory, name, timeout) for name in PROCESSES]
    (directory / "cluster.json").unlink(missing_ok=True)
    return any(stopped)


def status(directory: Path | str = DEFAULT_DIR) -> dict[str, object]:
    directory = Path(directory).resolve()
    state = read_state(directory)
    result: dict[str, object] = {name: running_pid(directory, name) for name in PROCESSES}
    result["ready"] = bool(state and _Probe(f"{state.server}/readyz", state.token, b"ok")())
    if state:
        result.update(server=state.server, kubeconfig=state.kubeconfig, version=state.version)
    result["bin_dir"] = str(bin_dir())
    return result


@contextlib.contextmanager
def running(directory: Path | str = DEFAULT_DIR) -> Iterator[ClusterState]:
    """Context manager: up() on entry, down() on exit."""
    state = up(directory)
    try:
        yield state
    finally:
        down(directory)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)
    p_build = sub.add_parser("build", help="build etcd, kube-apiserver, helm (cached)")
    p_build.add_argument("--procs", type=int, default=None, help="go build -p (default: Go's)")
    p_build.add_argument(
        "--kubectl",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"also build kubectl {K8S_VERSION} (default: only when none is on PATH)",
    )
    sub.add_parser("bin-dir", help="print the cache bin directory")
    for name, text in (
        ("up", "start etcd + kube-apiserver, wait for /readyz"),
        ("down", "stop them by pid"),
        ("status", "print pids and readiness as JSON"),
        ("env", "print `export KUBECONFIG=DIR/kubeconfig` and PATH (kubectl, helm)"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"state dir ({DEFAULT_DIR})")
        if name == "up":
            p.add_argument("--timeout", type=float, default=READY_TIMEOUT_S)
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            print(build(procs=args.procs, kubectl=args.kubectl))
        elif args.command == "bin-dir":
            print(bin_dir())
        elif args.command == "up":
            started = time.monotonic()
            state = up(args.dir, timeout=args.timeout)
            print(f"kube-apiserver {state.version} ready at {state.server} ", end="")
            print(f"in {time.monotonic() - started:.1f}s; KUBECONFIG={state.kubeconfig}")
        elif args.command == "down":
            print("stopped" if down(args.dir) else "not running")
        elif args.command == "status":
            result = status(args.dir)
            print(json.dumps(result, indent=2))
            return 0 if result["ready"] else 1
        elif args.command == "env":
            print(f"export KUBECONFIG={Path(args.dir).resolve() / 'kubeconfig'}")
            print(f'export PATH="{bin_dir()}:$PATH"')  # kubectl and helm at the server's version
    except K8sLocalError as exc:
        print(f"k8s_local: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
