"""The chart's tracker parts: off by default; on, `mailsluice tracker` on `web` with its keys
Secret mounted, a Service, a PodDisruptionBudget, a ServiceMonitor, and an Ingress on the host
of `tracking.url` that reaches only the pixel and click paths."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.k8s_cluster import K8sCluster
from support.k8s_fixtures import CHART

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
