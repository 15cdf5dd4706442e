"""The chart's tracker parts: off by default; on, `mailsluice tracker` on `web` with its keys
Secret mounted, a Service, a PodDisruptionBudget, a ServiceMonitor, an Ingress on the host
of `tracking.url` that reaches only the pixel and click paths, and the operator told to hand the
same link base and keys to every pool's delivery workers."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.k8s_cluster import K8sCluster
from support.k8s_fixtures import CHART
from support.operator_pool import KAFKA, POOL_BODY

from mailsluice_operator import render
from mailsluice_operator.settings import OperatorSettings

FULL_VALUES = CHART / "ci" / "full-values.yaml"
KEYS = "--set", "tracking.keys.existingSecret=tk"


@pytest.fixture(scope="module")
def helm(cluster: K8sCluster) -> Path:
    return cluster.helm


def _render(helm: Path, *args: str, check: bool = True) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [str(helm), "template", "rel", str(CHART), "-n", "ns", "--kube-version", "1.34.0", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=check,
    )
    if not check:
        assert proc.returncode != 0
        return [{"stderr": proc.stderr}]
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def _find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def test_off_by_default_and_keys_required(helm: Path) -> None:
    docs = _render(helm)
    assert not [d for d in docs if "tracker" in d["metadata"]["name"]]
    (failed,) = _render(helm, "--set", "tracking.enabled=true", check=False)
    assert "tracking.keys.existingSecret is required" in failed["stderr"]


def test_tracker_deployment_service_and_pdb(helm: Path) -> None:
    docs = _render(helm, "--set", "tracking.enabled=true", *KEYS)
    deployment = _find(docs, "Deployment", "rel-mailsluice-tracker")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"] == ["tracker"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MAILSLUICE_TRACKING_URL"] == "https://tracking.example.com"
    assert env["MAILSLUICE_TRACKING_KEYS_DIR"] == "/etc/mailsluice/tracking-keys"
    assert env["MAILSLUICE_TRACKING_LISTEN_PORT"] == "8080"
    assert env["MAILSLUICE_TRACKING_HTTP_PORT"] == "9109"
    assert env["MAILSLUICE_TRACKING_HTTP_HOST"] == "0.0.0.0"
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "web": 8080,
        "http": 9109,
    }
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["tracking-keys"]["secret"]["secretName"] == "tk"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["tracking-keys"] == "/etc/mailsluice/tracking-keys"
    service = _find(docs, "Service", "rel-mailsluice-tracker")
    assert [(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [
        ("web", 80, "web"),
        ("http", 9109, "http"),
    ]
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "tracker"
    pdb = _find(docs, "PodDisruptionBudget", "rel-mailsluice-tracker")
    assert pdb["spec"]["maxUnavailable"] == 1
    policy = _find(docs, "NetworkPolicy", "rel-mailsluice-tracker")
    assert [r["ports"][0]["port"] for r in policy["spec"]["ingress"]] == ["web", "http"]


def test_full_values_ingress_on_the_urls_host_and_scraped(helm: Path) -> None:
    docs = _render(helm, "-f", str(FULL_VALUES))
    ingress = _find(docs, "Ingress", "rel-mailsluice-tracker")
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "click.example.com"
    assert [p["path"] for p in rule["http"]["paths"]] == ["/o/", "/c/"]
    assert {p["backend"]["service"]["port"]["name"] for p in rule["http"]["paths"]} == {"web"}
    assert ingress["spec"]["tls"] == [
        {"hosts": ["click.example.com"], "secretName": "tracking-tls"}
    ]
    deployment = _find(docs, "Deployment", "rel-mailsluice-tracker")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MAILSLUICE_TRACKING_TRUSTED_PROXIES"] == "10.0.0.0/8"
    assert env["MAILSLUICE_TRACKING_ACTIVE_KEY"] == "t2"
    monitor = _find(docs, "ServiceMonitor", "rel-mailsluice-tracker")
    assert monitor["spec"]["endpoints"][0]["port"] == "http"
    assert monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "tracker"


def test_schema_refuses_a_url_that_is_not_a_base(helm: Path) -> None:
    (failed,) = _render(helm, *KEYS, "--set", "tracking.url=tracking.example.com", check=False)
    assert "tracking" in failed["stderr"] and "url" in failed["stderr"]


def _operator_env(docs: list[dict[str, Any]]) -> dict[str, str]:
    deployment = _find(docs, "Deployment", "rel-mailsluice-operator")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value") for e in container["env"]}


def test_the_operator_hands_tracking_to_the_workers_only_when_enabled(helm: Path) -> None:
    env = _operator_env(_render(helm))
    assert not [name for name in env if name.startswith("MAILSLUICE_OPERATOR_TRACKING_")]
    docs = _render(helm, "-f", str(FULL_VALUES), "--set", "tracking.transactional=true")
    env = _operator_env(docs)
    assert env["MAILSLUICE_OPERATOR_TRACKING_URL"] == "https://click.example.com"
    assert env["MAILSLUICE_OPERATOR_TRACKING_KEYS_SECRET"] == "mailsluice-tracking-keys"
    assert env["MAILSLUICE_OPERATOR_TRACKING_ACTIVE_KEY"] == "t2"
    assert env["MAILSLUICE_OPERATOR_TRACKING_DEFAULT"] == "opens"
    assert env["MAILSLUICE_OPERATOR_TRACKING_TRANSACTIONAL"] == "true"
    # what the operator makes of it: a worker with the tracker's link base and keys Secret
    prefix = "MAILSLUICE_OPERATOR_"
    op = OperatorSettings.model_validate(
        {k.removeprefix(prefix).lower(): v for k, v in env.items() if k.startswith(prefix)}
    )
    pod = render.render_deployment(render.Pool.from_body(POOL_BODY), 1, KAFKA, op)
    worker = pod["spec"]["template"]["spec"]
    worker_env = {e["name"]: e.get("value") for e in worker["containers"][0]["env"]}
    assert worker_env["MAILSLUICE_TRACKING_URL"] == "https://click.example.com"
    assert worker_env["MAILSLUICE_TRACKING_DEFAULT"] == "opens"
    volumes = {v["name"]: v for v in worker["volumes"]}
    tracker = _find(docs, "Deployment", "rel-mailsluice-tracker")["spec"]["template"]["spec"]
    tracker_keys = {v["name"]: v for v in tracker["volumes"]}["tracking-keys"]["secret"]
    assert volumes["tracking-keys"]["secret"]["secretName"] == tracker_keys["secretName"]


def test_schema_refuses_an_unknown_default(helm: Path) -> None:
    (failed,) = _render(helm, *KEYS, "--set", "tracking.default=sometimes", check=False)
    assert "default" in failed["stderr"]
