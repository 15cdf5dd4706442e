"""The Helm chart: lint, render with default and full values, and every object accepted by the
real API server (server-side dry-run), plus a real `helm install` into the test control plane."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError
from support.k8s_cluster import K8sCluster
from support.k8s_fixtures import CHART, apply_crd, get_json

from mailsluice.admin.config import settings_classes

FULL_VALUES = CHART / "ci" / "full-values.yaml"
KUBE_VERSION = "1.34.0"
NS = "mailsluice-chart"
PROMETHEUS_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


@pytest.fixture(scope="module")
def helm(cluster: K8sCluster) -> Path:
    return cluster.helm


def _helm(helm: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(helm), *args], capture_output=True, text=True, timeout=120, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)}: {proc.stdout}\n{proc.stderr}")
    return proc


def render(helm: Path, *values: str, extra: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    args = ["template", "rel", str(CHART), "--namespace", NS, "--kube-version", KUBE_VERSION]
    for path in values:
        args += ["-f", path]
    out = _helm(helm, *args, *extra).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def _pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in docs:
        if doc["kind"] == "Deployment":
            yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]


@pytest.mark.parametrize("values", [(), (str(FULL_VALUES),)], ids=["default", "full"])
def test_lint_strict(helm: Path, values: tuple[str, ...]) -> None:
    args = ["lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION]
    for path in values:
        args += ["-f", path]
    out = _helm(helm, *args).stdout
    assert "0 chart(s) failed" in out


def test_default_render(helm: Path) -> None:
    docs = render(helm)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        ["Deployment"] * 3
        + ["NetworkPolicy"] * 4
        + ["PodDisruptionBudget", "Role", "RoleBinding", "Service", "ServiceAccount"]
        + ["ConfigMap"]  # the Grafana dashboards
    )
    dashboards = next(d for d in docs if d["kind"] == "ConfigMap")
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert sorted(dashboards["data"]) == sorted(p.name for p in CHART.glob("dashboards/*.json"))
    # Off by default: monitors, example pool, cluster scope. On: the stream processors.
    _check_streams(docs)
    operator = next(
        d
        for d in docs
        if d["metadata"]["name"] == "rel-mailsluice-operator" and d["kind"] == "Deployment"
    )
    assert operator["spec"]["replicas"] == 1
    container = operator["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["operator"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MAILSLUICE_OPERATOR_NAMESPACE"] == NS
    assert env["MAILSLUICE_KAFKA_BOOTSTRAP"] == "kafka-kafka-bootstrap.kafka:9092"
    role = next(d for d in docs if d["kind"] == "Role")
    verbs = {(tuple(r["apiGroups"]), tuple(r["resources"])): r["verbs"] for r in role["rules"]}
    assert verbs[(("",), ("secrets",))] == ["get"]  # never list/watch Secrets
    assert all("*" not in v for v in verbs.values())
    ingest_svc = next(d for d in docs if d["kind"] == "Service")
    assert ingest_svc["spec"]["ports"][0] == {
        "name": "smtp",
        "port": 25,
        "targetPort": "smtp",
        "protocol": "TCP",
    }


def test_full_render(helm: Path) -> None:
    docs = render(helm, str(FULL_VALUES))
    kinds = {d["kind"] for d in docs}
    assert {"ServiceMonitor", "PodMonitor", "PrometheusRule", "SendingPool"} <= kinds
    assert {"ClusterRole", "ClusterRoleBinding"} <= kinds and "Role" not in kinds
    ingest = next(
        d
        for d in docs
        if d["metadata"]["name"] == "rel-mailsluice-ingest" and d["kind"] == "Deployment"
    )
    pod = ingest["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["MAILSLUICE_INGEST_TLS_CERT_FILE"] == "/etc/mailsluice/tls/tls.crt"
    assert env["MAILSLUICE_KAFKA_SSL_CAFILE"] == "/etc/mailsluice/kafka-ca/ca.crt"
    assert env["MAILSLUICE_INGEST_MAX_RECIPIENTS"] == "500"
    assert pod["containers"][0]["envFrom"] == [{"secretRef": {"name": "mailsluice-kafka"}}]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "mailsluice-smtp-tls"
    assert volumes["auth"]["secret"]["secretName"] == "mailsluice-smtp-auth"
    monitor = next(d for d in docs if d["kind"] == "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    streams = next(
        d
        for d in docs
        if d["metadata"]["name"] == "rel-mailsluice-streams" and d["kind"] == "Deployment"
    )
    assert streams["spec"]["template"]["spec"]["containers"][0]["args"] == ["streams"]
    _check_operator_is_scraped(docs)


def _check_operator_is_scraped(docs: list[dict[str, Any]]) -> None:
    """The PodMonitor selects the operator pod and its `http` port is the operator's /metrics,
    which its NetworkPolicy lets Prometheus reach."""
    operator = next(
        d
        for d in docs
        if d["metadata"]["name"] == "rel-mailsluice-operator" and d["kind"] == "Deployment"
    )
    pod = operator["spec"]["template"]
    container = pod["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == 9103 == int(env["MAILSLUICE_OPERATOR_METRICS_PORT"])
    # in the pod it listens beyond loopback (outside a cluster it binds 127.0.0.1)
    assert env["MAILSLUICE_OPERATOR_HTTP_HOST"] == "0.0.0.0"
    monitor = next(d for d in docs if d["kind"] == "PodMonitor")
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "http" and endpoint["path"] == "/metrics"
    (expr,) = monitor["spec"]["selector"]["matchExpressions"]
    labels = pod["metadata"]["labels"]
    assert expr["operator"] == "In" and labels[expr["key"]] in expr["values"]
    policy = next(
        d
        for d in docs
        if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "rel-mailsluice-operator"
    )
    assert any(p["port"] == "http" for rule in policy["spec"]["ingress"] for p in rule["ports"])


def _check_streams(docs: list[dict[str, Any]]) -> None:
    """`mailsluice streams` with its endpoints on the `http` port, probed there."""
    streams = next(
        d
        for d in docs
        if d["metadata"]["name"] == "rel-mailsluice-streams" and d["kind"] == "Deployment"
    )
    container = streams["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["streams"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == 9105 == int(env["MAILSLUICE_STREAMS_HTTP_PORT"])
    assert env["MAILSLUICE_STREAMS_HTTP_HOST"] == "0.0.0.0"
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert any(
        d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "rel-mailsluice-streams"
        for d in docs
    )


@pytest.mark.parametrize("values", [(), (str(FULL_VALUES),)], ids=["default", "full"])
def test_every_pod_is_hardened(helm: Path, values: tuple[str, ...]) -> None:
    for name, pod in _pod_specs(render(helm, *values)):
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert container["resources"]["limits"]["memory"], name
        if not name.endswith("-operator"):
            assert pod["automountServiceAccountToken"] is False, name


def test_prometheus_rules_pass_promtool(helm: Path, tmp_path: Path) -> None:
    rule = next(d for d in render(helm, str(FULL_VALUES)) if d["kind"] == "PrometheusRule")
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    proc = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_prometheus_rule_takes_the_tempfail_ratio(helm: Path) -> None:
    def rule_exprs(*extra: str) -> dict[str, str]:
        docs = render(helm, str(FULL_VALUES), extra=extra)
        rule = next(d for d in docs if d["kind"] == "PrometheusRule")
        return {r["alert"]: r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]}

    assert "> 0.05 # metrics" in rule_exprs()["MailsluiceIngestRejecting451"]
    tuned = rule_exprs("--set-json", "metrics.prometheusRule.tempfailRatio=0.2")
    assert "> 0.2 # metrics" in tuned["MailsluiceIngestRejecting451"]
    assert "0.05 # metrics" not in json.dumps(tuned)


def test_prometheus_rule_takes_the_runbook_base_url(helm: Path) -> None:
    def runbook_urls(*extra: str) -> set[str]:
        docs = render(helm, str(FULL_VALUES), extra=extra)
        rule = next(d for d in docs if d["kind"] == "PrometheusRule")
        return {r["annotations"]["runbook_url"] for g in rule["spec"]["groups"] for r in g["rules"]}

    default = runbook_urls()
    assert (
        "https://github.com/mailsluice/mailsluice/blob/main/docs/runbooks/"
        + ("MailsluiceBounceRateHigh.md")
        in default
    )
    own = runbook_urls("--set", "metrics.prometheusRule.runbookBaseUrl=https://wiki.test/rb/")
    assert "https://wiki.test/rb/MailsluiceBounceRateHigh.md" in own
    assert len(own) == len(default) and all(u.startswith("https://wiki.test/rb/M") for u in own)


def test_schema_refuses_bad_values(helm: Path) -> None:
    args = ["template", "rel", str(CHART), "--kube-version", KUBE_VERSION]
    for bad in (
        "kafka.securityProtocol=TLS",
        "ingest.service.port=0",
        "operator.unknownKey=1",
        "kafka.bootstrap=no-port",
    ):
        proc = _helm(helm, *args, "--set", bad, check=False)
        assert proc.returncode != 0 and "values don't meet the specifications" in proc.stderr, bad


def test_values_yaml_documents_every_key() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    for i, line in enumerate(lines):
        if re.match(r"^\s*[A-Za-z_][\w.-]*:", line):
            before = lines[i - 1].strip() if i else ""
            if not before.startswith("#"):
                undocumented.append(line.strip())
    assert undocumented == []
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert "$ref" not in json.dumps(schema).replace('"$ref": "#/definitions/', "")


def test_chart_ships_the_crd_and_notes(helm: Path) -> None:
    out = _helm(
        helm, "template", "rel", str(CHART), "--include-crds", "--kube-version", KUBE_VERSION
    ).stdout
    assert "name: sendingpools.mailsluice.io" in out
    notes = (CHART / "templates" / "NOTES.txt").read_text()
    assert "kubectl get spool" in notes


def test_every_rendered_object_passes_server_side_dry_run(cluster: K8sCluster, helm: Path) -> None:
    apply_crd(cluster)
    if get_json(cluster, "namespace", NS) is None:
        cluster.kubectl("create", "namespace", NS)
    for values in ((), (str(FULL_VALUES),)):
        docs = [d for d in render(helm, *values) if d["kind"] not in PROMETHEUS_KINDS]
        stream = "\n---\n".join(yaml.safe_dump(d) for d in docs)
        out = cluster.kubectl(
            "apply",
            "--server-side",
            "--dry-run=server",
            "--field-manager=chart-test",
            "-f",
            "-",
            input=stream,
        ).stdout
        applied = [line for line in out.splitlines() if "(server dry run)" in line]
        assert len(applied) == len(docs), out
    # Nothing was persisted.
    assert get_json(cluster, "deployment", "rel-mailsluice-ingest", "-n", NS) is None


def test_helm_install_and_uninstall(cluster: K8sCluster) -> None:
    apply_crd(cluster)
    cluster.helm_run(
        "install",
        "demo",
        str(CHART),
        "--namespace",
        "mailsluice-demo",
        "--create-namespace",
        "--set",
        "examplePool.enabled=true",
    )
    try:
        pool = get_json(cluster, "sendingpool", "default", "-n", "mailsluice-demo")
        assert pool is not None and pool["spec"]["maxWorkers"] == 4
        assert pool["spec"]["workerThroughput"] == 50  # CRD default filled in
        dep = get_json(cluster, "deployment", "demo-mailsluice-operator", "-n", "mailsluice-demo")
        assert dep is not None
        status = cluster.helm_run("status", "demo", "-n", "mailsluice-demo").stdout
        assert "STATUS: deployed" in status
        assert "kubectl get spool -n mailsluice-demo" in status  # NOTES.txt rendered
    finally:
        cluster.helm_run("uninstall", "demo", "--namespace", "mailsluice-demo")
    assert (
        get_json(cluster, "deployment", "demo-mailsluice-ingest", "-n", "mailsluice-demo") is None
    )


def _leaf_paths(node: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from _leaf_paths(value, f"{prefix}.{key}")
    else:
        yield prefix


def _referenced_values() -> set[str]:
    """Every .Values path the templates read, with `$v := .Values.x` aliases resolved."""
    text = "\n".join(p.read_text() for p in (CHART / "templates").iterdir())
    aliases = dict(re.findall(r"\$(\w+)\s*:?=\s*(?:\$|\.)?\w*\.Values((?:\.\w+)+)\s", text))
    refs = set(re.findall(r"\.Values((?:\.\w+)+)", text))
    for name, base in aliases.items():
        refs -= {base}  # binding an alias reads nothing by itself
        refs |= {base + tail for tail in re.findall(rf"\${name}((?:\.\w+)+)", text)}
    return refs


def test_every_values_key_is_used_by_a_template() -> None:
    """A key in values.yaml that no template reads is a setting that silently does nothing."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    refs = _referenced_values()
    unused = [
        path[1:]
        for path in _leaf_paths(values)
        # Used when the template reads the key itself or a map around it (e.g. toYaml).
        if not any(path == ref or path.startswith(ref + ".") for ref in refs)
    ]
    assert unused == []


def test_unsubscribe_service_ingress_and_ingest_share_the_keys(helm: Path) -> None:
    """Off by default; on, `mailsluice unsubscribe` serves the pages on `web` (the only port
    the Ingress reaches, and only /u/) and ingest mounts the same token keys."""
    assert not [d for d in render(helm) if "unsubscribe" in d["metadata"]["name"]]
    docs = render(helm, str(FULL_VALUES))
    ours = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    deployment = ours[("Deployment", "rel-mailsluice-unsubscribe")]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"] == ["unsubscribe"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"web": 8080, "http": 9106}
    assert int(env["MAILSLUICE_UNSUBSCRIBE_LISTEN_PORT"]) == 8080
    assert int(env["MAILSLUICE_UNSUBSCRIBE_HTTP_PORT"]) == 9106
    assert env["MAILSLUICE_UNSUBSCRIBE_URL"] == "https://unsubscribe.example.com"
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    ingress = ours[("Ingress", "rel-mailsluice-unsubscribe")]
    (rule,) = ingress["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    assert rule["host"] == "unsubscribe.example.com"
    assert path["path"] == "/u/" and path["backend"]["service"]["port"] == {"name": "web"}
    assert ingress["spec"]["tls"] == [
        {"hosts": ["unsubscribe.example.com"], "secretName": "unsubscribe-tls"}
    ]
    assert ("NetworkPolicy", "rel-mailsluice-unsubscribe") in ours
    ingest = ours[("Deployment", "rel-mailsluice-ingest")]["spec"]["template"]["spec"]
    ingest_env = {e["name"]: e.get("value") for e in ingest["containers"][0]["env"]}
    assert ingest_env["MAILSLUICE_UNSUBSCRIBE_MAILTO_DOMAIN"] == "unsubscribe.example.com"
    for spec in (pod, ingest):
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["unsubscribe-keys"]["secret"]["secretName"] == "mailsluice-unsubscribe-keys"


@pytest.mark.parametrize("values", [(), (str(FULL_VALUES),)], ids=["default", "full"])
def test_every_rendered_setting_is_one_the_services_accept(
    helm: Path, values: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each container's MAILSLUICE_* values, as Kubernetes hands them over, pass the settings
    classes (Helm prints a large number as 2.097152e+07 unless the template says int64)."""
    for name, spec in _pod_specs(render(helm, *values)):
        for container in spec["containers"]:
            env = {
                e["name"]: e["value"]
                for e in container.get("env") or []
                if "value" in e and e["name"].startswith("MAILSLUICE_")
            }
            with monkeypatch.context() as patched:
                for key in [k for k in os.environ if k.startswith("MAILSLUICE_")]:
                    patched.delenv(key)
                for key, value in env.items():
                    patched.setenv(key, value)
                for cls in settings_classes():
                    try:
                        cls()
                    except ValidationError as exc:
                        pytest.fail(f"{name}: {exc}")
