"""The test control plane (etcd + kube-apiserver from scripts/k8s_local.py) works end to end."""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.k8s_cluster import K8sCluster, k8s_local

CONFIGMAP = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: dry-run-probe
  namespace: default
data:
  hello: world
"""

CRD = """\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.probe.mailsluice.io
spec:
  group: probe.mailsluice.io
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wdg]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            x-kubernetes-validations:
            - rule: "self.min <= self.max"
              message: "min must not exceed max"
            properties:
              min: {type: integer, default: 1}
              max: {type: integer}
"""


def _widget(name: str, lo: int, hi: int) -> str:
    return textwrap.dedent(f"""\
        apiVersion: probe.mailsluice.io/v1
        kind: Widget
        metadata: {{name: {name}, namespace: default}}
        spec: {{min: {lo}, max: {hi}}}
        """)


def test_script_versions_match_the_tools_module() -> None:
    go_mod = (k8s_local.TOOLS_MODULE / "go.mod").read_text()

    def required(module: str) -> str:
        match = re.search(rf"^\s*{re.escape(module)} (v\S+)", go_mod, re.MULTILINE)
        assert match, module
        return match.group(1)

    assert required("k8s.io/kubernetes") == k8s_local.K8S_VERSION
    assert required("go.etcd.io/etcd/server/v3") == k8s_local.ETCD_VERSION
    staging = "v0." + k8s_local.K8S_VERSION.split(".", 1)[1]
    replaced = re.findall(r"^\s*(k8s\.io/\S+) => \1 (v\S+)$", go_mod, re.MULTILINE)
    assert len(replaced) >= 25
    assert {version for _, version in replaced} == {staging}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[K8sCluster]:
    cluster = K8sCluster(tmp_path_factory.mktemp("k8s"))
    cluster.start()
    yield cluster
    cluster.stop()


def test_kubeconfig_reaches_the_apiserver(cluster: K8sCluster) -> None:
    assert cluster.server.startswith("https://127.0.0.1:")
    out = cluster.kubectl("get", "ns", "default", "-o", "name").stdout
    assert out.strip() == "namespace/default"
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == cluster.version


def test_server_side_dry_run_apply_persists_nothing(cluster: K8sCluster) -> None:
    out = cluster.kubectl(
        "apply", "--server-side", "--dry-run=server", "-f", "-", input=CONFIGMAP
    ).stdout
    assert "configmap/dry-run-probe serverside-applied (server dry run)" in out
    missing = cluster.kubectl("get", "configmap", "dry-run-probe", check=False)
    assert missing.returncode != 0
    assert "NotFound" in missing.stderr


def test_crd_becomes_established_and_validates(cluster: K8sCluster) -> None:
    cluster.kubectl("apply", "--server-side", "-f", "-", input=CRD)
    cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", "crd/widgets.probe.mailsluice.io"
    )
    cluster.kubectl("apply", "--server-side", "-f", "-", input=_widget("good", 1, 3))
    got = json.loads(cluster.kubectl("get", "wdg", "good", "-o", "json").stdout)
    assert got["spec"] == {"min": 1, "max": 3}
    # CEL rule across fields is enforced by this apiserver.
    bad = cluster.kubectl("apply", "-f", "-", input=_widget("bad", 5, 2), check=False)
    assert bad.returncode != 0
    assert "min must not exceed max" in bad.stderr


def test_helm_installs_into_the_cluster(cluster: K8sCluster, tmp_path: Path) -> None:
    chart = tmp_path / "probe"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text(
        "apiVersion: v2\nname: probe\nversion: 0.1.0\nkubeVersion: '>=1.34.0-0'\n"
    )
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: helm-probe\n"
        "data:\n  kube: {{ .Capabilities.KubeVersion.Version | quote }}\n"
    )
    # Offline rendering uses the version built into helm's ldflags: our apiserver's minor.
    rendered = cluster.helm_run("template", "probe", str(chart)).stdout
    assert 'kube: "v1.34.0"' in rendered
    cluster.helm_run("install", "probe", str(chart), "--namespace", "default", "--wait")
    data = json.loads(cluster.kubectl("get", "configmap", "helm-probe", "-o", "json").stdout)
    assert data["data"]["kube"] == cluster.version
    cluster.helm_run("uninstall", "probe", "--namespace", "default")


def test_stop_ends_both_processes(cluster: K8sCluster) -> None:
    pids = cluster.pids()
    assert all(pids.values()), pids
    cluster.stop()
    assert cluster.pids() == {"kube-apiserver": None, "etcd": None}
    for pid in pids.values():
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
