"""The single-node cluster whose pods really run (scripts/k8s_node.py), for tests.

One cluster per pytest session, whichever test asks first (the bridge and node IP are fixed, so
there is one per machine); tests/cluster/conftest.py has the fixtures::

    def test_x(node: NodeCluster) -> None:
        node.kubectl("apply", "-f", "-", input=MANIFEST)

`node.images` are the references imported into containerd (the probe image of
tests/cluster/apiprobe always; more with `node.import_images(archive, ...)`), so a pod spec uses
them with `imagePullPolicy: Never`. Pods reach the host at `node.node_ip` (10.217.0.1).

The binaries must be built before pytest runs (`python3 scripts/k8s_node.py build`, or `make
k8s-build`): a cold build takes far longer than a test's timeout. start() fails fast without them.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
APIPROBE = REPO_ROOT / "tests" / "cluster" / "apiprobe"
APIPROBE_REF = "localhost/mailsluice-apiprobe:test"


def _load_script(name: str, file: str) -> ModuleType:
    # scripts/ is not a package; load the stdlib-only scripts by path, once (the script puts
    # scripts/ on sys.path for its own sibling imports).
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / file)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


k8s_node = _load_script("mailsluice_k8s_node", "k8s_node.py")
# The very modules k8s_node imports (it put scripts/ on sys.path): one ImageArchive class.
k8s_images = importlib.import_module("k8s_images")
k8s_node_api = importlib.import_module("k8s_node_api")
k8s_host = importlib.import_module("k8s_host")


def apiprobe_image() -> Any:
    """The probe image (a static Go program, cached by its source): at start it GETs
    /version through the `kubernetes` ClusterIP with its service-account token and logs
    `apiserver url=... status=...`; it serves :8080 /healthz and /apiserver (the same check)."""
    return k8s_images.go_program_image(APIPROBE_REF, APIPROBE, name="apiprobe")


class NodeCluster:
    """The node cluster with its state, logs and kubeconfig in `directory`."""

    def __init__(self, directory: Path | str, *, ready_timeout: float = 180.0) -> None:
        self.directory = Path(directory)
        self.ready_timeout = ready_timeout
        self._state: Any = None  # k8s_node.NodeState while running
        # The host as the first start() found it (links, iptables, sysctls, shared dirs,
        # cgroups), to compare with after stop(); None when a cluster was already running.
        self.host_before: dict[str, object] | None = None

    def start(self) -> None:
        """Start (or find running) with the probe image imported; wait until usable."""
        if self._state is not None and self.running():
            return
        if self.host_before is None and not self.running():
            self.host_before = dict(k8s_host.host_snapshot())
        # The daemons run in their own sessions: make sure an aborted pytest does not leak them.
        atexit.register(k8s_node.down, self.directory)
        image = apiprobe_image()
        self._state = k8s_node.up(self.directory, [image], timeout=self.ready_timeout)

    def stop(self) -> None:
        k8s_node.down(self.directory)
        self._state = None

    def running(self) -> bool:
        return all(
            k8s_node.running_pid(self.directory.resolve(), name) for name in k8s_node.PROCESSES
        )

    def leftovers(self) -> dict[str, list[str]]:
        """What of the cluster is still on the host: processes, mounts, bridge, iptables."""
        return dict(k8s_node.leftovers(self.directory))

    def host_now(self) -> dict[str, object]:
        """The host_snapshot() to compare with host_before."""
        return dict(k8s_host.host_snapshot())

    def ctr(self, *args: str) -> subprocess.CompletedProcess[str]:
        """containerd's `ctr` on the node's socket, namespace k8s.io (the CRI's)."""
        paths = k8s_node.conf.Paths(self.directory.resolve())
        result: subprocess.CompletedProcess[str] = k8s_node_api.ctr(paths, *args)
        return result

    @property
    def _running(self) -> Any:
        if self._state is None:
            raise RuntimeError("NodeCluster is not started")
        return self._state

    @property
    def kubeconfig(self) -> Path:
        return Path(self._running.kubeconfig)

    @property
    def node_ip(self) -> str:
        return str(self._running.node_ip)

    @property
    def node_name(self) -> str:
        return str(self._running.node_name)

    @property
    def version(self) -> str:
        return str(self._running.version)

    @property
    def images(self) -> list[str]:
        return list(self._running.images)

    @property
    def bin_dir(self) -> Path:
        """kubectl, helm and the cluster's binaries."""
        return Path(self._running.bin_dir)

    def import_images(self, *archives: Path | str) -> list[str]:
        """Import more OCI archives into the node's containerd; return their references."""
        refs = list(k8s_node.import_images(self.directory, archives))
        self._state = k8s_node.NodeState(
            **{**vars(self._running), "images": sorted({*self.images, *refs})}
        )
        return refs

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["KUBECACHEDIR"] = str(self.directory / "kubectl-cache")
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        return env

    def kubectl_argv(self, *args: str) -> list[str]:
        cache = self.directory / "kubectl-cache"  # not the user's ~/.kube/cache
        kubectl = str(self.bin_dir / "kubectl")
        return [kubectl, "--kubeconfig", str(self.kubeconfig), "--cache-dir", str(cache), *args]

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run the cluster's own kubectl (same release) against it; output captured as text."""
        argv = self.kubectl_argv(*args)
        proc = subprocess.run(
            argv, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} exited {proc.returncode}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc

    def log_tail(self, name: str, lines: int = 40) -> str:
        """The end of a component's log (kubelet, containerd, ...), for failure messages."""
        try:
            text = (self.directory / f"{name}.log").read_text(errors="replace")
        except OSError:
            return f"(no {name} log)"
        return "\n".join(text.splitlines()[-lines:])


_SHARED: dict[str, NodeCluster] = {}


def shared_node(directory: Path) -> NodeCluster:
    """The session's node cluster, started on first use (and again if a test stopped it)."""
    cluster = _SHARED.setdefault("node", NodeCluster(directory))
    cluster.start()
    return cluster


def stop_shared_node() -> None:
    cluster = _SHARED.pop("node", None)
    if cluster is not None:
        cluster.stop()
