"""The operator's Kubernetes client against the real kube-apiserver: the credentials kubectl would
use (an exec credential plugin, a ServiceAccount in-cluster, inline client certificates), and
server-side apply, get and delete of a pool's children.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from support.eventually import eventually_sync
from support.k8s_cluster import K8sCluster
from support.k8s_fixtures import (
    KUBECTL_POLL_S,
    condition,
    environ,
    get_json,
    running_operator,
    write_kubeconfig,
)
from support.loopback import free_port
from support.operator_cluster import (
    NS_NO_KAFKA,
    apply_yaml,
    delete_pool,
    get_deployment,
    get_pool,
    pool_yaml,
    prepare,
)
from support.tls import self_signed

from mailsluice.kafka.settings import KafkaSettings
from mailsluice_operator import FIELD_MANAGER, kube
from mailsluice_operator.handlers import build_registry
from mailsluice_operator.reconcile import KubeError
from mailsluice_operator.settings import OperatorSettings

NS = "op-kube"
EXPIRES = dt.datetime(2099, 1, 1, tzinfo=dt.UTC)

# An exec credential plugin as client-go runs it: it reads KUBERNETES_EXEC_INFO and prints an
# ExecCredential. It also logs each run, so a test can tell it was used.
EXEC_PLUGIN = """\
import json, os, sys
info = json.loads(os.environ["KUBERNETES_EXEC_INFO"])
token, log, expires = sys.argv[1:]
with open(log, "a") as out:
    out.write(info["kind"] + " " + info["apiVersion"] + "\\n")
status = {"token": token, "expirationTimestamp": expires}
print(json.dumps({"apiVersion": info["apiVersion"], "kind": "ExecCredential", "status": status}))
"""


@pytest.fixture(scope="module")
def crd(cluster: K8sCluster) -> K8sCluster:
    prepare(cluster)
    if get_json(cluster, "namespace", NS) is None:
        cluster.kubectl("create", "namespace", NS)
    return cluster


def _exec_kubeconfig(cluster: K8sCluster, tmp_path: Path) -> tuple[Path, Path]:
    """A kubeconfig whose user is an exec plugin handing out the admin token, with the server's
    certificate verified against inline CA data; and the plugin's log."""
    plugin, log = tmp_path / "plugin.py", tmp_path / "plugin.log"
    plugin.write_text(EXEC_PLUGIN)
    user = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": sys.executable,
            "args": [str(plugin), cluster.token, str(log), EXPIRES.isoformat()],
            "interactiveMode": "Never",
        }
    }
    path = write_kubeconfig(tmp_path / "kubeconfig", cluster.server, user, ca_file=cluster.ca_file)
    return path, log


def _configmap(name: str, value: str) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": NS},
        "data": {"key": value},
    }


async def test_exec_plugin_credentials_apply_get_and_delete(
    crd: K8sCluster, tmp_path: Path
) -> None:
    kubeconfig, log = _exec_kubeconfig(crd, tmp_path)
    with environ(KUBECONFIG=str(kubeconfig)):
        credentials = await kube.load_credentials()
        assert credentials.expires == EXPIRES
        info = await kube.connection_info(credentials)
        assert (info.server, info.scheme, info.token) == (crd.server, "Bearer", crd.token)
        assert info.insecure is False and info.expiration == EXPIRES
        async with kube.connect() as api:
            assert await api.get("ConfigMap", NS, "probe") is None
            applied = await api.apply(_configmap("probe", "one"))
            assert applied["data"] == {"key": "one"}
            fields = applied["metadata"]["managedFields"]
            assert (FIELD_MANAGER, "Apply") in {(m["manager"], m["operation"]) for m in fields}
            again = await api.apply(_configmap("probe", "two"))
            assert again["metadata"]["uid"] == applied["metadata"]["uid"]
            found = await api.get("ConfigMap", NS, "probe")
            assert found is not None and found["data"] == {"key": "two"}
            assert await api.delete("ConfigMap", NS, "probe") is True
            assert await api.delete("ConfigMap", NS, "probe") is False
            with pytest.raises(KubeError) as invalid:
                await api.apply(_configmap("Not_A_Name", "x"))
            assert invalid.value.status == 422
    assert get_json(crd, "configmap", "probe", "-n", NS) is None
    runs = log.read_text().splitlines()
    assert len(runs) >= 2  # once for load_credentials, once for connect
    assert set(runs) == {"ExecCredential client.authentication.k8s.io/v1"}


def test_operator_runs_on_exec_plugin_credentials(crd: K8sCluster, tmp_path: Path) -> None:
    """kopf's own connection (watch, status) and the operator's writes both go through the
    plugin: nothing in the kubeconfig is a token kopf could read by itself."""
    kubeconfig, log = _exec_kubeconfig(crd, tmp_path)
    op = OperatorSettings(scale_interval_s=1.0, kafka_timeout_s=2.0)
    settings = KafkaSettings(bootstrap=f"127.0.0.1:{free_port()}", request_timeout_ms=1000)
    with running_operator(NS_NO_KAFKA, build_registry(op, settings), kubeconfig):
        apply_yaml(crd, pool_yaml("viaexec", NS_NO_KAFKA))
        eventually_sync(
            lambda: get_deployment(crd, "viaexec", NS_NO_KAFKA),
            within=60,
            interval=KUBECTL_POLL_S,
            what="Deployment",
        )
        eventually_sync(
            lambda: (
                condition(get_pool(crd, "viaexec", NS_NO_KAFKA), "Stalled").get("reason")
                == "KafkaUnavailable"
            ),
            within=60,
            interval=KUBECTL_POLL_S,
            what="status written by kopf",
        )
        delete_pool(crd, "viaexec", NS_NO_KAFKA)
        assert get_deployment(crd, "viaexec", NS_NO_KAFKA) is None
    assert len(log.read_text().splitlines()) >= 3  # kopf's login and the operator's rounds


async def test_in_cluster_service_account(crd: K8sCluster, tmp_path: Path) -> None:
    """In a pod: the ServiceAccount's token and CA from their mounted files, the API server from
    KUBERNETES_SERVICE_HOST/PORT; requests run as that ServiceAccount, TLS verified."""
    crd.kubectl("create", "serviceaccount", "probe", "-n", NS)
    crd.kubectl("create", "role", "probe", "--verb=get", "--resource=secrets", "-n", NS)
    account = f"system:serviceaccount:{NS}:probe"
    crd.kubectl(
        "create", "rolebinding", "probe", "--role=probe", f"--serviceaccount={NS}:probe", "-n", NS
    )
    eventually_sync(
        lambda: (
            crd.kubectl("auth", "can-i", "get", "secrets", "-n", NS, f"--as={account}").stdout
            == "yes\n"
        ),
        within=60,
        interval=KUBECTL_POLL_S,
        what="RoleBinding in effect",
    )
    sa_dir = tmp_path / "serviceaccount"
    sa_dir.mkdir()
    (sa_dir / "token").write_text(crd.kubectl("create", "token", "probe", "-n", NS).stdout)
    (sa_dir / "ca.crt").write_bytes(crd.ca_file.read_bytes())
    (sa_dir / "namespace").write_text(NS)
    host, port = crd.server.removeprefix("https://").rsplit(":", 1)
    service = {"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port}
    credentials = await kube.load_credentials(sa_dir, service)
    info = await kube.connection_info(credentials)
    assert (info.server, info.ca_path, info.insecure) == (crd.server, str(sa_dir / "ca.crt"), False)
    async with kube.connect(credentials=credentials) as api:
        assert await api.get("Secret", NS, "absent") is None  # allowed: 404, not 403
        with pytest.raises(KubeError) as refused:
            await api.get("ConfigMap", NS, "absent")
    assert refused.value.status == 403 and account in str(refused.value)


async def test_no_answer_is_unavailable_not_an_error_status(
    crd: K8sCluster, tmp_path: Path
) -> None:
    dead = f"127.0.0.1:{free_port()}"
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", f"https://{dead}", {"token": "x"})
    with environ(KUBECONFIG=str(kubeconfig)):
        async with kube.connect() as api:
            with pytest.raises(kube.KubeUnavailable, match=f"Cannot connect to host {dead}"):
                await api.apply(_configmap("probe", "one"))
        broken = tmp_path / "broken"
        broken.write_text("clusters: []\n")
        with environ(KUBECONFIG=str(broken)), pytest.raises(kube.KubeUnavailable):
            await kube.load_credentials()


def test_inline_client_certificates_are_written_once_and_removed_at_exit(
    crd: K8sCluster, tmp_path: Path
) -> None:
    """Certificate and key given as data go to files ssl can load: one pair however many
    rounds run, and none left behind when the process ends."""
    cert, key = self_signed(tmp_path, "probe")
    user = {
        "token": crd.token,
        "client-certificate-data": base64.b64encode(cert.read_bytes()).decode(),
        "client-key-data": base64.b64encode(key.read_bytes()).decode(),
    }
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", crd.server, user, ca_file=crd.ca_file)
    rounds = textwrap.dedent("""\
        import asyncio, hashlib, json
        from pathlib import Path
        from mailsluice_operator import kube

        async def main():
            for _ in range(3):
                async with kube.connect() as api:
                    assert await api.get("ConfigMap", "default", "absent") is None
                config = (await kube.load_credentials()).configuration
                cert = hashlib.sha256(Path(config.cert_file).read_bytes()).hexdigest()
                print(json.dumps([config.cert_file, config.key_file, cert]))

        asyncio.run(main())
        """)
    proc = subprocess.run(
        [sys.executable, "-c", rounds],
        env={"KUBECONFIG": str(kubeconfig), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    pairs = {tuple(json.loads(line)) for line in proc.stdout.splitlines()}
    assert len(pairs) == 1, pairs
    ((cert_file, key_file, written),) = pairs
    assert written == hashlib.sha256(cert.read_bytes()).hexdigest()
    assert cert_file != key_file and cert_file != str(cert)
    assert not Path(cert_file).exists() and not Path(key_file).exists()
