"""A real etcd + kube-apiserver on 127.0.0.1 for tests, wrapping scripts/k8s_local.py.

Meant for a session fixture::

    @pytest.fixture(scope="session")
    def k8s(tmp_path_factory):
        cluster = K8sCluster(tmp_path_factory.mktemp("k8s"))
        cluster.start()
        yield cluster
        cluster.stop()

The binaries must be built before pytest runs (`python3 scripts/k8s_local.py build`): a cold build
takes far longer than the per-test timeout. start() builds only if they are missing.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]


def _load_script() -> ModuleType:
    # scripts/ is not a package; load the stdlib-only script by path, once.
    name = "mailsluice_k8s_local"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / "k8s_local.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


k8s_local = _load_script()


def kubectl_path() -> str:
    """The kubectl the tests run: $MAILSLUICE_KUBECTL, else the one on PATH, else the cached build.

    The image's kubectl (package `kubectl`, Google Cloud SDK) is a dispatcher that runs
    `kubectl.1.<minor>` when the server's minor is installed and its default (1.32) otherwise;
    1.32 against 1.34 is outside the supported skew, so take a sibling within one minor when
    present. Without any kubectl on PATH, `scripts/k8s_local.py build` builds one of the same
    release as the apiserver (or always, with --kubectl).
    """
    forced = os.environ.get("MAILSLUICE_KUBECTL")
    if forced:
        return forced
    found = shutil.which("kubectl")
    if found:
        minor = int(k8s_local.K8S_VERSION.split(".")[1])
        directory = Path(found).resolve().parent
        for candidate in (minor, minor - 1, minor + 1):
            sibling = directory / f"kubectl.1.{candidate}"
            if sibling.exists():
                return str(sibling)
        return found
    cached = Path(k8s_local.binary("kubectl"))
    if cached.exists():
        return str(cached)
    raise RuntimeError("no kubectl: install one or run `scripts/k8s_local.py build --kubectl`")


class K8sCluster:
    """etcd + kube-apiserver with their state, logs and kubeconfig in `directory`."""

    def __init__(self, directory: Path | str, *, ready_timeout: float = 120.0) -> None:
        self.directory = Path(directory)
        self.ready_timeout = ready_timeout
        self._state: Any = None  # k8s_local.ClusterState while running

    def start(self) -> Path:
        """Start (reusing a control plane already running from the directory); return kubeconfig."""
        k8s_local.build(quiet=True)
        # The daemons run in their own sessions; make sure an aborted pytest does not leak them.
        atexit.register(k8s_local.down, self.directory)
        self._state = k8s_local.up(self.directory, timeout=self.ready_timeout)
        return self.kubeconfig

    def stop(self) -> None:
        k8s_local.down(self.directory)
        self._state = None

    def __enter__(self) -> K8sCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def _running(self) -> Any:
        if self._state is None:
            raise RuntimeError("K8sCluster is not started")
        return self._state

    @property
    def kubeconfig(self) -> Path:
        return Path(self._running.kubeconfig)

    @property
    def server(self) -> str:
        """https://127.0.0.1:PORT (self-signed certificate; the kubeconfig skips verification)."""
        return str(self._running.server)

    @property
    def ca_file(self) -> Path:
        """The apiserver's self-signed serving certificate followed by the CA that signed it."""
        return self.directory / "certs" / "apiserver.crt"

    @property
    def token(self) -> str:
        """Bearer token of user `admin` in group system:masters."""
        return str(self._running.token)

    @property
    def version(self) -> str:
        return str(k8s_local.K8S_VERSION)

    @property
    def bin_dir(self) -> Path:
        """Holds etcd, kube-apiserver and helm."""
        return Path(k8s_local.bin_dir())

    @property
    def helm(self) -> Path:
        return Path(k8s_local.binary("helm"))

    def pids(self) -> dict[str, int | None]:
        return {
            name: k8s_local.running_pid(self.directory.resolve(), name)
            for name in k8s_local.PROCESSES
        }

    def env(self) -> dict[str, str]:
        """os.environ plus KUBECONFIG, and the cache bin dir first on PATH (for helm)."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        return env

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster; stdout/stderr captured as text."""
        return self._run(
            [kubectl_path(), "--kubeconfig", str(self.kubeconfig), *args], input, check
        )

    def helm_run(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run the cached helm against this cluster."""
        return self._run(
            [str(self.helm), "--kubeconfig", str(self.kubeconfig), *args], input, check
        )

    def _run(
        self, argv: list[str], input: str | None, check: bool
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            argv,
            input=input,
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=120,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} exited {proc.returncode}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc
