"""The chart's parts for tenants: the API and webhook sender Deployments and Services with their
probes and the tenants Secret mounted, ingest mounting it too, the operator's rights to render
it, and the SendingTenant CRD shipped as generated."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.k8s_cluster import K8sCluster
from support.k8s_fixtures import CHART

from mailsluice_operator import tenant_crd

FULL_VALUES = CHART / "ci" / "full-values.yaml"
TENANTS_FILE = "/etc/mailsluice/tenants/tenants.yaml"


@pytest.fixture(scope="module")
def helm(cluster: K8sCluster) -> Path:
    return cluster.helm


def _render(helm: Path, *args: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [str(helm), "template", "rel", str(CHART), "-n", "ns", "--kube-version", "1.34.0", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def _find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def _container(deployment: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    pod = deployment["spec"]["template"]["spec"]
    return pod, pod["containers"][0]


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in container["env"]}


def _mounts_tenants(pod: dict[str, Any], container: dict[str, Any], secret: str) -> bool:
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    return (
        volumes.get("tenants", {}).get("secret") == {"secretName": secret, "optional": True}
        and mounts.get("tenants") == "/etc/mailsluice/tenants"
        and _env(container).get("MAILSLUICE_TENANTS_FILE") == TENANTS_FILE
    )


def test_api_deployment_and_service(helm: Path) -> None:
    docs = _render(helm, "--set", "api.enabled=true")
    pod, container = _container(_find(docs, "Deployment", "rel-mailsluice-api"))
    assert container["args"] == ["api"]
    env = _env(container)
    assert env["MAILSLUICE_API_LISTEN_PORT"] == "8080"
    assert env["MAILSLUICE_API_HTTP_PORT"] == "9107"
    assert env["MAILSLUICE_API_HTTP_HOST"] == "0.0.0.0"  # probed and scraped from outside
    assert env["MAILSLUICE_KAFKA_BOOTSTRAP"] == "kafka-kafka-bootstrap.kafka:9092"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"web": 8080, "http": 9107}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["resources"]["limits"]["memory"]
    assert _mounts_tenants(pod, container, "mailsluice-tenants")
    service = _find(docs, "Service", "rel-mailsluice-api")
    assert [(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [
        ("web", 80, "web"),
        ("http", 9107, "http"),
    ]
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "api"
    assert _find(docs, "PodDisruptionBudget", "rel-mailsluice-api")["spec"]["maxUnavailable"] == 1
    policy = _find(docs, "NetworkPolicy", "rel-mailsluice-api")
    assert [r["ports"][0]["port"] for r in policy["spec"]["ingress"]] == ["web", "http"]


def test_ports_follow_the_values(helm: Path) -> None:
    docs = _render(
        helm,
        *("--set", "api.enabled=true,api.containerPort=8181,api.metricsPort=9207"),
        *("--set", "webhooks.enabled=true,webhooks.metricsPort=9208"),
    )
    _, api = _container(_find(docs, "Deployment", "rel-mailsluice-api"))
    assert _env(api)["MAILSLUICE_API_LISTEN_PORT"] == "8181"
    assert {p["containerPort"] for p in api["ports"]} == {8181, 9207}
    _, hooks = _container(_find(docs, "Deployment", "rel-mailsluice-webhooks"))
    assert _env(hooks)["MAILSLUICE_WEBHOOKS_HTTP_PORT"] == "9208"
    assert hooks["ports"] == [{"name": "http", "containerPort": 9208, "protocol": "TCP"}]


def test_webhooks_deployment(helm: Path) -> None:
    docs = _render(helm, "--set", "webhooks.enabled=true")
    pod, container = _container(_find(docs, "Deployment", "rel-mailsluice-webhooks"))
    assert container["args"] == ["webhooks"]
    assert _env(container)["MAILSLUICE_WEBHOOKS_HTTP_PORT"] == "9108"
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert _mounts_tenants(pod, container, "mailsluice-tenants")
    egress = _find(docs, "NetworkPolicy", "rel-mailsluice-webhooks")["spec"]["egress"]
    assert {"ports": [{"port": 80, "protocol": "TCP"}, {"port": 443, "protocol": "TCP"}]} in egress


def test_off_by_default_and_ingest_mounts_the_tenants(helm: Path) -> None:
    docs = _render(helm)
    components = {d["metadata"]["labels"]["app.kubernetes.io/component"] for d in docs}
    assert not components & {"api", "webhooks"}
    pod, container = _container(_find(docs, "Deployment", "rel-mailsluice-ingest"))
    assert _mounts_tenants(pod, container, "mailsluice-tenants")
    # the stream processors read the tenants' unengaged policies (hygiene blocks)
    pod, container = _container(_find(docs, "Deployment", "rel-mailsluice-streams"))
    assert _mounts_tenants(pod, container, "mailsluice-tenants")
    docs = _render(helm, "--set", "tenants.ingest=false")
    pod, container = _container(_find(docs, "Deployment", "rel-mailsluice-ingest"))
    assert "MAILSLUICE_TENANTS_FILE" not in _env(container)


def test_full_values_scrape_api_and_webhooks(helm: Path) -> None:
    docs = _render(helm, "-f", str(FULL_VALUES))
    pod, container = _container(_find(docs, "Deployment", "rel-mailsluice-api"))
    assert _mounts_tenants(pod, container, "tenants")
    monitor = _find(docs, "ServiceMonitor", "rel-mailsluice-api")
    assert monitor["spec"]["endpoints"][0]["port"] == "http"
    assert monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "api"
    (expr,) = _find(docs, "PodMonitor", "rel-mailsluice-workers")["spec"]["selector"][
        "matchExpressions"
    ]
    assert "webhooks" in expr["values"]
    hooks = _find(docs, "NetworkPolicy", "rel-mailsluice-webhooks")["spec"]["egress"]
    assert {} in hooks  # egressPorts: [] lets the sender reach any port
    rule = _find(docs, "PrometheusRule", "rel-mailsluice")
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert {"MailsluiceApiServerErrors", "MailsluiceWebhooksDeadLettered"} <= alerts


@pytest.mark.parametrize("values", [(), ("-f", str(FULL_VALUES))], ids=["default", "full"])
def test_operator_may_render_the_tenants_secret(helm: Path, values: tuple[str, ...]) -> None:
    docs = _render(helm, *values)
    role = next(d for d in docs if d["kind"] in ("Role", "ClusterRole"))
    secret = "tenants" if values else "mailsluice-tenants"
    rules = [(r["resources"], r.get("resourceNames"), r["verbs"]) for r in role["rules"]]
    assert (["sendingtenants"], None, ["get", "list", "watch", "patch", "update"]) in rules
    assert (["sendingtenants/status"], None, ["get", "patch", "update"]) in rules
    assert (["secrets"], [secret], ["patch"]) in rules
    assert all("list" not in verbs for res, _, verbs in rules if res == ["secrets"])
    _, container = _container(_find(docs, "Deployment", "rel-mailsluice-operator"))
    assert _env(container)["MAILSLUICE_OPERATOR_TENANTS_SECRET"] == secret


def test_chart_ships_the_generated_tenant_crd(helm: Path) -> None:
    path = CHART / "crds" / tenant_crd.FILE_NAME
    assert path.read_text() == tenant_crd.crd_yaml()
    out = _render(helm, "--include-crds")
    names = [d["metadata"]["name"] for d in out if d["kind"] == "CustomResourceDefinition"]
    assert "sendingtenants.mailsluice.io" in names
