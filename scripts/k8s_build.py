"""Build etcd, kube-apiserver and helm (and the node binaries on request) from Go modules, cached.

The binaries come from the private tools module in scripts/k8s (helm from its own go.mod) and
land in <repo>/.cache/k8s/<versions>/bin. Standard library only. scripts/k8s_local.py runs them
and re-exports these names, so `k8s_local.build()`, `k8s_local.binary()` and the version
constants keep working for its importers.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
TOOLS_MODULE = REPO_ROOT / "scripts" / "k8s"
# MAILSLUICE_K8S_CACHE moves the binary cache (e.g. to share it between clones).
CACHE_ROOT = Path(os.environ.get("MAILSLUICE_K8S_CACHE") or REPO_ROOT / ".cache" / "k8s")

# Versions: kube-apiserver and etcd come from scripts/k8s/go.mod (keep them in step with it);
# etcd is the one k8s.io/kubernetes v1.34.4 itself requires. Helm is built on its own go.mod.
K8S_VERSION = "v1.34.4"
ETCD_VERSION = "v3.6.4"
HELM_VERSION = "v3.21.4"
K8S_PACKAGE = "k8s.io/kubernetes/cmd/kube-apiserver"
KUBECTL_PACKAGE = "k8s.io/kubernetes/cmd/kubectl"  # built only on request or without a kubectl
ETCD_PACKAGE = "go.etcd.io/etcd/server/v3"  # the etcd binary's main package
HELM_PACKAGE = "helm.sh/helm/v3/cmd/helm"
# The node cluster (scripts/k8s_node.py) adds these, all from the same k8s.io/kubernetes.
NODE_PACKAGES = {
    "kubelet": "k8s.io/kubernetes/cmd/kubelet",
    "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
    "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
    "kube-proxy": "k8s.io/kubernetes/cmd/kube-proxy",
    "kubectl": KUBECTL_PACKAGE,
}


class K8sLocalError(RuntimeError):
    """Building, starting or stopping the local control plane failed."""


def bin_dir() -> Path:
    name = f"kubernetes-{K8S_VERSION}_etcd-{ETCD_VERSION}_helm-{HELM_VERSION}"
    return CACHE_ROOT / name / "bin"


def binary(name: str) -> Path:
    """Path of a cached binary: 'etcd', 'kube-apiserver', 'helm' or (if built) 'kubectl'."""
    return bin_dir() / name


def _k8s_ldflags() -> str:
    # Without these the server reports v0.0.0-master and clients (helm, kubectl) see no version.
    major, minor, _ = K8S_VERSION.lstrip("v").split(".")
    flags = []
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={K8S_VERSION}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.buildDate=1970-01-01T00:00:00Z",
        ]
    return " ".join(flags)


def _helm_ldflags() -> str:
    # Helm's default .Capabilities.KubeVersion (template/lint without a cluster) = our apiserver.
    major, minor, _ = K8S_VERSION.lstrip("v").split(".")
    flags = [f"-X helm.sh/helm/v3/internal/version.version={HELM_VERSION}"]
    for pkg in ("helm.sh/helm/v3/pkg/chartutil", "helm.sh/helm/v3/pkg/lint/rules"):
        flags += [f"-X {pkg}.k8sVersionMajor={major}", f"-X {pkg}.k8sVersionMinor={minor}"]
    return " ".join(flags)


def _go_env(procs: int | None) -> dict[str, str]:
    env = dict(os.environ)
    env["CGO_ENABLED"] = "0"
    env["GOFLAGS"] = "-mod=readonly -buildvcs=false" + (f" -p={procs}" if procs else "")
    return env


def _run_go(args: list[str], cwd: Path, env: dict[str, str], quiet: bool) -> None:
    cmd = ["go", *args]
    if shutil.which("nice"):
        cmd = ["nice", "-n", "19", *cmd]
    if not quiet:
        print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, cwd=cwd, env=env, check=False)
    if proc.returncode != 0:
        raise K8sLocalError(f"{' '.join(args[:2])} failed (exit {proc.returncode})")


def _build_one(
    name: str, package: str, ldflags: str, out: Path, env: dict[str, str], *, quiet: bool
) -> None:
    target = out / name
    if name == "helm":
        # `go install pkg@version` builds on helm's own go.mod; GOBIN is a scratch dir.
        gobin = out / ".helm-gobin"
        gobin.mkdir(exist_ok=True)
        env_helm = dict(env, GOBIN=str(gobin))
        env_helm["GOFLAGS"] = env_helm["GOFLAGS"].replace("-mod=readonly ", "")
        args = ["install", "-trimpath", "-ldflags", ldflags, f"{package}@{HELM_VERSION}"]
        _run_go(args, REPO_ROOT, env_helm, quiet)
        (gobin / "helm").replace(target)
        gobin.rmdir()
    else:
        tmp = out / f".{name}.tmp"
        args = ["build", "-trimpath", "-ldflags", ldflags, "-o", str(tmp), package]
        _run_go(args, TOOLS_MODULE, env, quiet)
        tmp.replace(target)


def build(
    procs: int | None = None,
    quiet: bool = False,
    kubectl: bool | None = None,
    node: bool = False,
) -> Path:
    """Build etcd, kube-apiserver and helm into the cache (no-op when present); return bin dir.

    kubectl (same release) is built too when asked, or by default when none is on PATH; with
    node=True also kubelet, kube-controller-manager, kube-scheduler, kube-proxy and kubectl.
    """
    out = bin_dir()
    wanted = {
        "etcd": (ETCD_PACKAGE, ""),
        "kube-apiserver": (K8S_PACKAGE, _k8s_ldflags()),
        "helm": (HELM_PACKAGE, _helm_ldflags()),
    }
    if kubectl or (kubectl is None and not shutil.which("kubectl")):
        wanted["kubectl"] = (KUBECTL_PACKAGE, _k8s_ldflags())
    if node:
        wanted.update({name: (pkg, _k8s_ldflags()) for name, pkg in NODE_PACKAGES.items()})
    if all((out / name).exists() for name in wanted):
        return out
    if not shutil.which("go"):
        raise K8sLocalError("go not found: the build needs a Go toolchain (>= 1.26 for helm)")
    out.mkdir(parents=True, exist_ok=True)
    env = _go_env(procs)
    with open(out.parent / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent build waits, then finds the binaries
        for name, (package, ldflags) in wanted.items():
            if (out / name).exists():
                continue
            started = time.monotonic()
            _build_one(name, package, ldflags, out, env, quiet=quiet)
            if not quiet:
                print(f"built {name} in {time.monotonic() - started:.0f}s", file=sys.stderr)
    return out
