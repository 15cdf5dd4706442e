"""The chart as a user installs it, on a cluster whose pods really run the project's image.

One release for the module, in test order: install and Ready, a SendingPool and its workers,
mail through `kubectl port-forward` at the pool's own rate, RBAC and monitors against the real
pods, scaling from lag, a worker deleted mid-run, an upgrade that rolls, and the uninstall.
"""

from __future__ import annotations

import email
import json
import shutil
import smtplib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from support.chart_release import (
    SINK_DOMAIN,
    Outside,
    Release,
    is_ready,
    pool_manifest,
    values,
)
from support.dns_server import DnsServer
from support.eventually import eventually_sync
from support.fake_mx import FakeMx
from support.k8s_fixtures import condition
from support.k8s_node import NodeCluster
from support.kafka_broker import start_broker
from support.monitoring_crds import manifest as monitoring_crds
from support.scripts import script

image_build = script("image_build")

# The first test installs the release (and the module's setup may build the image first).
pytestmark = pytest.mark.timeout(900)

NAMESPACE = "mailsluice-e2e"
POOL = "default"  # ingest's default pool for trusted-network clients
SMTP_SERVICE_PORT = 25  # ingest.service.port; the NOTES forward a local port to it
RATE = 1.0  # messages per second the pool allows to the sink's domain
WORKERS = "app.kubernetes.io/component=delivery,mailsluice.io/pool=" + POOL


@dataclass
class Stage:
    release: Release
    outside: Outside
    values: dict[str, Any]

    def send(self, count: int, tag: str) -> list[str]:
        """`count` messages over one SMTP session through the port-forward; their subjects."""
        subjects = [f"{tag} {i}" for i in range(count)]
        service = f"svc/{self.release.fullname}-ingest"
        forward = self.release.port_forward(service, SMTP_SERVICE_PORT)
        with forward as port, smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
            for i, subject in enumerate(subjects):
                msg = EmailMessage()
                msg["From"] = "app@e2e.test"
                msg["To"] = f"user{i}@{SINK_DOMAIN}"
                msg["Subject"] = subject
                msg.set_content("hello from the cluster\n")
                smtp.send_message(msg)
        return subjects

    def arrived(self, tag: str) -> list[tuple[str, float]]:
        """(subject, arrival time) of the sink's messages whose subject starts with `tag`."""
        out = []
        for message in list(self.outside.mx.messages):
            subject = str(email.message_from_bytes(message.data)["Subject"])
            if subject.startswith(f"{tag} "):
                out.append((subject, message.received_at))
        return out

    def wait_arrived(
        self, subjects: list[str], within: float, logs: Path | None = None
    ) -> list[tuple[str, float]]:
        tag = subjects[0].rsplit(" ", 1)[0]

        def detail() -> str:
            missing = sorted(set(subjects) - {s for s, _ in self.arrived(tag)})
            text = f"missing at the sink: {missing}\n{self.release.diagnose()}"
            if logs is not None:
                text += f"\n--- {logs.name}\n" + "\n".join(logs.read_text().splitlines()[-60:])
            return text

        return eventually_sync(
            lambda: (got := self.arrived(tag)) and {s for s, _ in got} >= set(subjects) and got,
            within=within, interval=0.5, what=f"{len(subjects)} messages '{tag}' at the sink",
            detail=detail,
        )  # fmt: skip


@pytest.fixture(scope="module")
def stage(node_session: NodeCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stage]:
    node = node_session
    archive, ref = image_build.ensure_image(quiet=True)
    node.import_images(archive)
    node.kubectl("apply", "-f", "-", input=monitoring_crds())
    work = tmp_path_factory.mktemp("chart-e2e")
    kafka = start_broker(work / "kafka", host=node.node_ip)
    dns = DnsServer(host=node.node_ip)
    dns.start()
    mx = FakeMx(host=node.node_ip).start()
    dns.set_mx(SINK_DOMAIN, [(10, f"mx.{SINK_DOMAIN}")])
    dns.set_a(f"mx.{SINK_DOMAIN}", [node.node_ip])
    outside = Outside(kafka, dns, mx)
    chart_values = values(ref, outside)
    chart_values["metrics"] = {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}}
    release = Release(node, "ms", NAMESPACE, work)
    try:
        yield Stage(release, outside, chart_values)
    finally:
        node.kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)
        mx.stop()
        dns.stop()
        kafka.stop()


def test_install_makes_every_component_ready(stage: Stage) -> None:
    release = stage.release
    notes = release.install(stage.values)
    assert f"svc/{release.fullname}-ingest 2525:25" in notes  # the NOTES' port-forward
    for component in ("ingest", "streams", "operator"):
        (pod,) = release.wait_ready(release.component(component), 1)
        image = pod["spec"]["containers"][0]["image"]
        assert image == f"{stage.values['image']['repository']}:{stage.values['image']['tag']}"


def test_a_pool_gets_ready_workers_and_printer_columns(stage: Stage) -> None:
    release = stage.release
    manifest = pool_manifest(
        POOL, NAMESPACE, stage.outside,
        scaleDownStabilizationSeconds=5,
        shaping=[{"match": SINK_DOMAIN, "messagesPerSecond": RATE, "maxConnections": 1}],
    )  # fmt: skip
    release.kubectl("apply", "-f", "-", input=manifest)
    release.wait_ready(WORKERS, 1)
    eventually_sync(
        lambda: condition(release.get("spool", POOL), "Ready").get("status") == "True",
        within=120, interval=0.5, what="pool Ready=True", detail=release.diagnose,
    )  # fmt: skip
    table = release.kubectl("get", "spool", POOL).splitlines()
    assert table[0].split()[:5] == ["NAME", "READY", "WORKERS", "LAG", "WARM-UP"]
    assert table[1].split()[:3] == [POOL, "True", "1"]


def test_swaks_through_port_forward_reaches_the_sink(stage: Stage) -> None:
    swaks = shutil.which("swaks")
    assert swaks, "swaks is installed by scripts/install_system_deps.sh"
    release = stage.release
    with release.port_forward(f"svc/{release.fullname}-ingest", SMTP_SERVICE_PORT) as port:
        sent = subprocess.run(
            [swaks, "--server", f"127.0.0.1:{port}", "--to", f"someone@{SINK_DOMAIN}",
             "--from", "you@mta.e2e.test", "--header", "Subject: swaks 0"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert "<-  250 2.0.0" in sent.stdout  # queued only once durable in Kafka
    stage.wait_arrived(["swaks 0"], within=60)


def test_the_pools_rate_holds_at_the_sink(stage: Stage) -> None:
    """The pool's shaping override (1/s to the sink's domain) is the ceiling the worker pod's
    closed loop climbs to: slow start doubles from 0.2/s every clean 10 s window, so without
    the override (default ceiling 100/s) the last 20 s of this run would see 2/s and more."""
    subjects = stage.send(60, "rate")
    times = sorted(t for _, t in stage.wait_arrived(subjects, within=240))
    last = [t for t in times if t >= times[-1] - 20.0]
    observed = (len(last) - 1) / 20.0
    assert observed <= RATE * 1.5, f"{observed:.2f} msg/s at the sink, the pool allows {RATE}"


def test_operator_runs_with_the_charts_rbac_only(stage: Stage) -> None:
    release = stage.release
    (pod,) = release.pods(release.component("operator"))
    account = pod["spec"]["serviceAccountName"]
    assert account == f"{release.fullname}-operator"
    who = f"--as=system:serviceaccount:{NAMESPACE}:{account}"

    def can(*args: str) -> str:
        return release.kubectl("auth", "can-i", *args, who, check=False).strip()

    assert can("patch", "deployments") == "yes"
    assert can("patch", "sendingpools.mailsluice.io/status") == "yes"
    assert can("list", "secrets", "--all-namespaces") == "no"
    assert can("create", "clusterrolebindings") == "no"
    assert can("delete", "nodes") == "no"
    # It reads the API with that account's token, from inside the pod, over the Service IP (a
    # refusal at its very start, before the RoleBinding reached the authorizer, is retried).
    logs = release.kubectl("logs", pod["metadata"]["name"], "--since=60s").splitlines()
    refused = [line for line in logs if "Forbidden" in line or "answered 403" in line]
    assert refused == []


def test_monitors_select_the_running_pods(stage: Stage) -> None:
    release = stage.release
    pods = [p for p in release.get("pods")["items"] if is_ready(p)]
    services = release.get("services")["items"]
    monitors = release.get("podmonitors.monitoring.coreos.com")["items"]
    assert [m["metadata"]["name"] for m in monitors] == [f"{release.fullname}-workers"]
    matched = [p for p in pods if _selects(monitors[0]["spec"]["selector"], p)]
    components = {p["metadata"]["labels"]["app.kubernetes.io/component"] for p in matched}
    assert components >= {"delivery", "streams", "operator"}
    for pod in matched:
        for endpoint in monitors[0]["spec"]["podMetricsEndpoints"]:
            _scrape(pod, _container_port(pod, endpoint["port"]), endpoint["path"])
    for monitor in release.get("servicemonitors.monitoring.coreos.com")["items"]:
        (svc,) = [s for s in services if _selects(monitor["spec"]["selector"], s)]
        backing = [p for p in pods if _selects({"matchLabels": svc["spec"]["selector"]}, p)]
        assert backing, f"{monitor['metadata']['name']}: Service {svc['metadata']['name']}"
        for endpoint in monitor["spec"]["endpoints"]:
            (port,) = [p for p in svc["spec"]["ports"] if p["name"] == endpoint["port"]]
            for pod in backing:
                _scrape(pod, _container_port(pod, port["targetPort"]), endpoint["path"])


def _selects(selector: dict[str, Any], obj: dict[str, Any]) -> bool:
    labels = obj["metadata"].get("labels") or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        assert expr["operator"] == "In", expr
        if labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


def _container_port(pod: dict[str, Any], port: str | int) -> int:
    if isinstance(port, int):
        return port
    named = [
        p["containerPort"]
        for c in pod["spec"]["containers"]
        for p in c.get("ports") or []
        if p.get("name") == port
    ]
    assert named, f"pod {pod['metadata']['name']} has no port named {port}"
    return int(named[0])


def _scrape(pod: dict[str, Any], port: int, path: str) -> None:
    """GET the pod's metrics at its own IP (the host reaches pod IPs over the node's bridge)."""
    import urllib.request

    url = f"http://{pod['status']['podIP']}:{port}{path}"
    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    assert "mailsluice_" in text, f"{url} serves no mailsluice_ metric"


def test_backlog_scales_workers_up_then_back_down(stage: Stage) -> None:
    release = stage.release
    (first,) = release.ready_pods(WORKERS)
    release.kubectl("patch", "spool", POOL, "--type=merge", "-p", '{"spec":{"lagPerWorker":5}}')
    subjects = stage.send(60, "backlog")
    _scaled_to(release, 3, within=60, what="operator scales the workers to 3 on lag")
    # A scaling setting is the operator's alone: the running worker was not replaced for it.
    assert first["metadata"]["name"] in {p["metadata"]["name"] for p in release.pods(WORKERS)}
    stage.wait_arrived(subjects, within=180)
    _scaled_to(release, 1, within=120, what="back to one worker once drained")
    release.kubectl("patch", "spool", POOL, "--type=merge", "-p", '{"spec":{"lagPerWorker":1000}}')


def _scaled_to(release: Release, workers: int, within: float, what: str) -> None:
    """The operator set the pool's Deployment to `workers` replicas, and they are Ready."""
    deployment = f"mailsluice-delivery-{POOL}"
    eventually_sync(
        lambda: release.get("deploy", deployment)["spec"]["replicas"] == workers,
        within=within, interval=0.5, what=what, detail=release.diagnose,
    )  # fmt: skip
    release.wait_ready(WORKERS, workers)


def test_deleting_a_worker_mid_run_loses_nothing(stage: Stage) -> None:
    release = stage.release
    subjects = stage.send(40, "kill")
    eventually_sync(
        lambda: len(stage.arrived("kill")) >= 5, within=60, interval=0.2, what="the run started"
    )
    (worker,) = release.ready_pods(WORKERS)
    with release.following_logs(worker["metadata"]["name"]) as logs:
        release.kubectl("delete", "pod", worker["metadata"]["name"], "--wait=false")
        got = stage.wait_arrived(subjects, within=300, logs=logs)
    assert {s for s, _ in got} == set(subjects)
    assert len(stage.arrived("kill")) < len(subjects) + 10  # duplicates bounded, not a resend


def test_upgrade_that_changes_a_value_rolls_the_pods(stage: Stage) -> None:
    release = stage.release
    (before,) = release.pods(release.component("ingest"))
    changed = json.loads(json.dumps(stage.values))
    changed["ingest"]["env"].append({"name": "MAILSLUICE_INGEST_GREET_PAUSE_S", "value": "0"})
    release.upgrade(changed)
    (after,) = release.wait_ready(release.component("ingest"), 1)
    assert after["metadata"]["uid"] != before["metadata"]["uid"]
    env = {e["name"]: e.get("value") for e in after["spec"]["containers"][0]["env"]}
    assert env["MAILSLUICE_INGEST_GREET_PAUSE_S"] == "0"
    (streams,) = release.pods(release.component("streams"))  # unchanged: not rolled
    assert streams["metadata"]["creationTimestamp"] <= before["metadata"]["creationTimestamp"]
    subjects = stage.send(1, "upgraded")
    stage.wait_arrived(subjects, within=120)


def test_uninstall_leaves_only_the_crd(stage: Stage) -> None:
    release = stage.release
    # Pools are the user's: deleting one removes its workers (the operator's finalizer).
    release.kubectl("delete", "spool", POOL, "--timeout=120s")
    release.helm("uninstall", release.name, "-n", NAMESPACE, "--wait", "--timeout", "3m")
    eventually_sync(
        lambda: _namespace_objects(release) == [],
        within=120, interval=1, what="an empty namespace",
        detail=lambda: _namespace_objects(release),
    )  # fmt: skip
    node = release.node
    crds = node.kubectl("get", "crd", "-o", "name").stdout.split()
    assert "customresourcedefinition.apiextensions.k8s.io/sendingpools.mailsluice.io" in crds
    instance = f"app.kubernetes.io/instance={release.name}"
    kinds = "clusterroles,clusterrolebindings"
    cluster_scoped = node.kubectl("get", kinds, "-l", instance, "-o", "name").stdout.split()
    assert cluster_scoped == []


def _namespace_objects(release: Release) -> list[str]:
    """Every object left in the namespace but what Kubernetes itself puts in each one."""
    kinds = release.node.kubectl("api-resources", "--verbs=list", "--namespaced", "-o", "name")
    # Events are history, not objects; Endpoints mirror EndpointSlices (and warn when listed).
    skipped = {"events", "events.events.k8s.io", "endpoints"}
    wanted = [k for k in kinds.stdout.split() if k not in skipped]
    names = release.kubectl("get", ",".join(wanted), "-o", "name").split()
    builtin = {"configmap/kube-root-ca.crt", "serviceaccount/default"}
    return sorted(n for n in names if n not in builtin and not _gone(release, n))


def _gone(release: Release, name: str) -> bool:
    """An object being deleted (garbage collection lags the uninstall) counts as gone."""
    found = json.loads(release.kubectl("get", name, "-o", "json", check=False) or "{}")
    return bool(not found or found["metadata"].get("deletionTimestamp"))
