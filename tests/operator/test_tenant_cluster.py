"""SendingTenants under the operator (kopf's KopfRunner) against a real kube-apiserver: the CRD's
rules, the tenants Secret holding every tenant in the file format the API reads, a claimed
domain stalling the newer tenant, and deletion. Tenants need no Kafka."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.eventually import eventually_sync
from support.k8s_cluster import K8sCluster
from support.k8s_fixtures import (
    CHART,
    KUBECTL_POLL_S,
    condition,
    get_json,
    running_operator,
)
from support.operator_cluster import (
    apply_yaml,
    can_i,
    chart_operator_kubeconfig,
    ensure_namespace,
    events_for,
    prepare,
)
from support.operator_tenant import DIGEST_A, KEY_A, WHSEC, tenant_body

from mailsluice.kafka.settings import KafkaSettings
from mailsluice.tenancy.model import parse_tenants
from mailsluice.tenancy.registry import Registry
from mailsluice_operator.handlers import build_registry
from mailsluice_operator.settings import OperatorSettings
from mailsluice_operator.tenant_handlers import own_namespace
from mailsluice_operator.tenant_spec import with_defaults

NS = "tenant-test"
SECRET = "mailsluice-tenants"


@pytest.fixture(scope="module")
def crd(cluster: K8sCluster) -> K8sCluster:
    return prepare(cluster, NS)


@pytest.fixture(scope="module")
def operator(crd: K8sCluster) -> Iterator[None]:
    # Tenants never talk to Kafka; the pools' settings are not used here.
    op = OperatorSettings(tenant_interval_s=1.0, namespace=NS)
    with running_operator(NS, build_registry(op, KafkaSettings()), crd.kubeconfig):
        yield


def _yaml(name: str, **spec: Any) -> str:
    body = tenant_body(name, namespace=NS, **spec)
    for key in ("uid", "generation", "creationTimestamp"):
        body["metadata"].pop(key)
    return json.dumps(body)


def _tenant(crd: K8sCluster, name: str) -> dict[str, Any] | None:
    return get_json(crd, "sendingtenant", name, "-n", NS)


def _tenants_file(crd: K8sCluster) -> Any:
    found = get_json(crd, "secret", SECRET, "-n", NS)
    if found is None:
        return None
    return yaml.safe_load(base64.b64decode(found["data"]["tenants.yaml"]))


def _wait(crd: K8sCluster, what: str, check: Any) -> Any:
    return eventually_sync(check, within=60, interval=KUBECTL_POLL_S, what=what)


def test_crd_refuses_what_its_rules_refuse(crd: K8sCluster) -> None:
    hook = {"id": "h", "url": "https://h.test/", "events": ["bounce"], "secretsRef": {"name": "s"}}
    cases: dict[str, dict[str, Any]] = {
        "a tenant owns at least one sender domain": {"domains": []},
        "perDay must not be below perHour": {"quotas": {"perHour": 10, "perDay": 5}},
        "url must be an http:// or https:// URL": {"webhooks": [{**hook, "url": "ftp://h.test/"}]},
        'spec.apiKeys[1]: Duplicate value: {"id":"acmekey1"}': {
            "apiKeys": [{"id": "acmekey1", "hash": DIGEST_A}, {"id": "acmekey1", "hash": DIGEST_A}]
        },
        'spec.webhooks[1]: Duplicate value: {"id":"h"}': {"webhooks": [hook, hook]},
        "give hash or secretRef": {"apiKeys": [{"id": "acmekey1"}]},
        "give passwordHash or secretRef": {"smtp": {"u": {}}},
        'Unsupported value: "sent"': {"webhooks": [{**hook, "events": ["sent"]}]},
        "spec.apiKeys[0].hash in body should match": {
            "apiKeys": [{"id": "acmekey1", "hash": "plaintext-key"}]
        },
    }
    for needle, spec in cases.items():
        proc = crd.kubectl("apply", "-f", "-", input=_yaml("refused", **spec), check=False)
        assert proc.returncode != 0 and needle in proc.stderr, (needle, proc.stderr)
    bad_name = _yaml("refused").replace('"refused"', '"refused.with.dots"')
    proc = crd.kubectl("apply", "-f", "-", input=bad_name, check=False)
    assert "a tenant name is 1-63 lower-case letters" in proc.stderr
    assert _tenant(crd, "refused") is None


def test_the_api_server_defaults_a_spec_as_the_operator_does(crd: K8sCluster) -> None:
    sent = {"pools": ["default"], "domains": ["a.test"]}
    out = crd.kubectl(
        "apply", "--dry-run=server", "-o", "json", "-f", "-", input=_yaml("defaults", **sent)
    ).stdout
    assert json.loads(out)["spec"] == with_defaults(sent)


def test_tenants_render_into_one_secret_conflicts_stall_and_deletion_removes(
    crd: K8sCluster, operator: None, tmp_path: Path
) -> None:
    crd.kubectl(
        "create", "secret", "generic", "acme-hooks", "-n", NS, f"--from-literal=current={WHSEC}"
    )
    hook = {
        "id": "main",
        "url": "https://hooks.acme.test/",
        "events": ["delivered"],
        "secretsRef": {"name": "acme-hooks"},
    }
    apply_yaml(crd, _yaml("acme", apiKeys=[{"id": "acmekey1", "hash": DIGEST_A}], webhooks=[hook]))
    _wait(
        crd, "acme Ready", lambda: condition(_tenant(crd, "acme"), "Ready").get("status") == "True"
    )
    apply_yaml(crd, _yaml("beta", domains=["beta.test"], quotas={"perHour": 5}))
    data = _wait(
        crd,
        "both in the Secret",
        lambda: (f := _tenants_file(crd)) and len(f["tenants"]) == 2 and f,
    )
    tenants = parse_tenants(data)
    assert tenants["acme"].webhooks[0].secrets == (WHSEC,)
    assert tenants["beta"].quotas.per_hour == 5
    path = tmp_path / "tenants.yaml"
    path.write_text(yaml.safe_dump(data))
    found = Registry(str(path)).by_api_key(KEY_A)
    assert found is not None and found.name == "acme"
    acme = _tenant(crd, "acme")
    assert acme is not None and acme["status"]["observedGeneration"] == 1
    assert acme["status"]["secret"] == SECRET
    table = crd.kubectl("get", "stenant", "acme", "-n", NS).stdout.splitlines()
    assert table[0].split() == ["NAME", "READY", "POOLS", "DOMAINS", "AGE"]
    assert table[1].split()[:4] == ["acme", "True", '["default"]', '["acme.test"]']

    # A newer tenant claiming acme's domain stalls; acme keeps it.
    apply_yaml(crd, _yaml("gamma", domains=["gamma.test", "acme.test"]))
    gamma = _wait(
        crd,
        "gamma Stalled",
        lambda: (
            (t := _tenant(crd, "gamma")) and condition(t, "Stalled").get("status") == "True" and t
        ),
    )
    stalled = condition(gamma, "Stalled")
    assert stalled["reason"] == "DomainClaimed" and "older tenant acme" in stalled["message"]
    assert condition(gamma, "Ready")["status"] == "False"
    assert sorted(_tenants_file(crd)["tenants"]) == ["acme", "beta"]
    _wait(
        crd,
        "Warning event",
        lambda: any(e["reason"] == "DomainClaimed" for e in events_for(crd, NS, "gamma")),
    )

    # Deleting acme removes it from the Secret and frees the domain for gamma.
    crd.kubectl("delete", "sendingtenant", "acme", "-n", NS, "--wait=false")
    _wait(
        crd,
        "acme out, gamma in",
        lambda: sorted((_tenants_file(crd) or {}).get("tenants") or {}) == ["beta", "gamma"],
    )
    _wait(crd, "acme gone", lambda: _tenant(crd, "acme") is None)
    _wait(
        crd,
        "gamma Ready",
        lambda: condition(_tenant(crd, "gamma"), "Ready").get("status") == "True",
    )
    for name in ("beta", "gamma"):
        crd.kubectl("delete", "sendingtenant", name, "-n", NS, "--wait=false")
    _wait(crd, "empty file", lambda: (_tenants_file(crd) or {}).get("tenants") == {})


def test_a_missing_secret_is_retried_until_it_exists(crd: K8sCluster, operator: None) -> None:
    hook = {
        "id": "main",
        "url": "https://hooks.late.test/",
        "events": ["bounce"],
        "secretsRef": {"name": "late-hooks"},
    }
    apply_yaml(crd, _yaml("late", webhooks=[hook]))
    late = _wait(
        crd,
        "SecretNotFound",
        lambda: (
            (t := _tenant(crd, "late"))
            and condition(t, "Ready").get("reason") == "SecretNotFound"
            and t
        ),
    )
    assert condition(late, "Stalled")["status"] == "False"
    assert "late" not in (_tenants_file(crd) or {}).get("tenants", {})
    crd.kubectl("create", "secret", "generic", "late-hooks", "-n", NS, f"--from-literal=k={WHSEC}")
    _wait(
        crd, "late Ready", lambda: condition(_tenant(crd, "late"), "Ready").get("status") == "True"
    )
    assert "late" in _tenants_file(crd)["tenants"]
    crd.kubectl("delete", "sendingtenant", "late", "-n", NS, "--wait=false")
    _wait(crd, "late gone", lambda: _tenant(crd, "late") is None)


def test_the_charts_rbac_is_enough_to_render_tenants(crd: K8sCluster, tmp_path: Path) -> None:
    """The operator as the chart's ServiceAccount: it creates the tenants Secret (server-side
    apply of a missing object), patches it, writes tenant status, and may not touch another
    Secret."""
    ns = "tenant-rbac"
    kubeconfig = chart_operator_kubeconfig(crd, ns, tmp_path / "kubeconfig")
    for verb, what, allowed in [
        ("patch", "secrets/mailsluice-tenants", "yes"),
        ("patch", "secrets/other", "no"),
        ("list", "sendingtenants.mailsluice.io", "yes"),
        ("patch", "sendingtenants.mailsluice.io/x", "yes"),
        ("delete", "sendingtenants.mailsluice.io", "no"),
    ]:
        assert can_i(crd, ns, verb, what) == allowed, (verb, what)
    op = OperatorSettings(tenant_interval_s=1.0)
    with running_operator(ns, build_registry(op, KafkaSettings()), kubeconfig):
        body = json.loads(_yaml("rbac"))
        body["metadata"]["namespace"] = ns
        apply_yaml(crd, json.dumps(body))
        _wait(
            crd,
            "status by the ServiceAccount",
            lambda: (
                condition(get_json(crd, "stenant", "rbac", "-n", ns), "Ready").get("status")
                == "True"
            ),
        )
        secret = get_json(crd, "secret", SECRET, "-n", ns)
        assert secret is not None
        assert "rbac" in yaml.safe_load(base64.b64decode(secret["data"]["tenants.yaml"]))["tenants"]
        crd.kubectl("delete", "stenant", "rbac", "-n", ns, "--wait=false")
        _wait(crd, "rbac gone", lambda: get_json(crd, "stenant", "rbac", "-n", ns) is None)


def test_the_readme_example_is_accepted(crd: K8sCluster) -> None:
    readme = (CHART.parents[2] / "README.md").read_text()
    (example,) = [
        block
        for block in readme.split("```yaml\n")[1:]
        if block.startswith("apiVersion: mailsluice.io/v1alpha1\nkind: SendingTenant")
    ]
    body = yaml.safe_load(example.split("```")[0].replace("sha256$<64 hex>", DIGEST_A))
    body["metadata"]["namespace"] = NS
    crd.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(body))


def test_the_secret_exists_before_the_first_tenant(crd: K8sCluster) -> None:
    """The API and ingest mount the Secret: the operator writes it at start, empty."""
    ns = "tenant-start"
    ensure_namespace(crd, ns)
    op = OperatorSettings(namespace=ns)
    with running_operator(ns, build_registry(op, KafkaSettings()), crd.kubeconfig):
        secret = _wait(crd, "the empty Secret", lambda: get_json(crd, "secret", SECRET, "-n", ns))
    assert parse_tenants(yaml.safe_load(base64.b64decode(secret["data"]["tenants.yaml"]))) == {}


def test_a_cluster_wide_operator_renders_its_own_namespace_at_start(tmp_path: Path) -> None:
    (tmp_path / "namespace").write_text("mailsluice\n")
    assert own_namespace(tmp_path) == "mailsluice"
    assert own_namespace(tmp_path / "absent") == ""
