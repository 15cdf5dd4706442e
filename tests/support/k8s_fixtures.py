"""Helpers for the operator and chart tests against the real API server (tests/support/k8s_cluster).

`shared_cluster()` starts one control plane per pytest process, whichever test module asks
first; each module's session fixture registers the (idempotent) stop.
"""

from __future__ import annotations

import base64
import gc
import json
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.k8s_cluster import K8sCluster

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "mailsluice"
CRD_FILE = CHART / "crds" / "sendingpool.yaml"
CRD_NAME = "sendingpools.mailsluice.io"
TENANT_CRD_FILE = CHART / "crds" / "sendingtenant.yaml"
TENANT_CRD_NAME = "sendingtenants.mailsluice.io"
# How often a wait on the API server looks again: each look is a kubectl process.
KUBECTL_POLL_S = 0.5

_SHARED: dict[str, K8sCluster] = {}


def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> K8sCluster:
    if "cluster" not in _SHARED:
        cluster = K8sCluster(tmp_path_factory.mktemp("k8s-operator"))
        cluster.start()
        _SHARED["cluster"] = cluster
    return _SHARED["cluster"]


def stop_shared_cluster() -> None:
    cluster = _SHARED.pop("cluster", None)
    if cluster is not None:
        cluster.stop()


def apply_crd(cluster: K8sCluster) -> None:
    """The chart's CRDs: the operator watches both kinds."""
    for path, name in ((CRD_FILE, CRD_NAME), (TENANT_CRD_FILE, TENANT_CRD_NAME)):
        cluster.kubectl("apply", "--server-side", "-f", str(path))
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{name}")


def get_json(cluster: K8sCluster, *args: str) -> dict[str, Any] | None:
    """kubectl get ... -o json, or None when it is not there."""
    proc = cluster.kubectl("get", *args, "-o", "json", check=False)
    if proc.returncode != 0:
        if "NotFound" in proc.stderr:
            return None
        raise AssertionError(proc.stderr)
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return {}


def write_kubeconfig(
    path: Path, server: str, user: dict[str, Any], *, ca_file: Path | None = None
) -> Path:
    """A one-context kubeconfig for `user` at `server`; TLS verified against `ca_file` (inline,
    as certificate-authority-data) when given, else not verified."""
    cluster: dict[str, Any] = {"server": server}
    if ca_file is None:
        cluster["insecure-skip-tls-verify"] = True
    else:
        cluster["certificate-authority-data"] = base64.b64encode(ca_file.read_bytes()).decode()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "c",
    }
    path.write_text(yaml.safe_dump(config))
    return path


@contextmanager
def environ(**values: str) -> Iterator[None]:
    """Set environment variables for the block (kopf and the operator read KUBECONFIG)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


@contextmanager
def running_operator(
    namespace: str, registry: Any, kubeconfig: Path, *, timeout: float = 60.0
) -> Iterator[None]:
    """The operator (kopf's KopfRunner, standalone, one namespace) for the block.

    kopf's own aiohttp session can be left holding a TLS connection to the API server when its
    loop stops (seen from its discovery request); the socket is then closed by the garbage
    collector with a ResourceWarning, which this suite turns into an error in whichever test
    happens to run. Collect it here, where it is known to be kopf's, with that warning ignored.
    """
    from kopf.testing import KopfRunner

    with environ(KUBECONFIG=str(kubeconfig)):
        runner = KopfRunner(
            ["run", "--standalone", "--namespace", namespace], registry=registry, timeout=timeout
        )
        with runner:
            yield
        exception, output = runner.exception, runner.output
    del runner
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    assert exception is None, output[-5000:]
    assert "Forbidden" not in output, output[-5000:]
