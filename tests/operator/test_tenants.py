"""SendingTenant: the CRD from the spec models, rendering into the tenants file, and one round of
reconcile_tenants with a fake API server."""

from __future__ import annotations

import argparse
import base64
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.operator_tenant import (
    DIGEST_A,
    DIGEST_B,
    KEY_A,
    SCRYPT,
    WHSEC,
    WHSEC_NEXT,
    secret,
    tenant_body,
)

from mailsluice.tenancy.keys import new_key
from mailsluice.tenancy.model import parse_tenants
from mailsluice.tenancy.registry import Registry
from mailsluice_operator import cli, tenant_crd
from mailsluice_operator.problems import PermanentProblem
from mailsluice_operator.reconcile import KubeError
from mailsluice_operator.tenant_reconcile import reconcile_tenants, status_changed
from mailsluice_operator.tenant_render import FILE_KEY, Claims, check_claims
from mailsluice_operator.tenant_spec import with_defaults

REPO = Path(__file__).resolve().parents[2]
NOW = "2026-12-03T12:00:00Z"


# --- the CRD -------------------------------------------------------------------------------


def test_chart_crd_is_the_generated_one() -> None:
    path = REPO / "deploy/helm/mailsluice/crds" / tenant_crd.FILE_NAME
    assert path.read_text() == tenant_crd.crd_yaml(), (
        "regenerate: mailsluice operator --print-tenant-crd"
    )


def test_crd_shape_rules_and_columns() -> None:
    (version,) = tenant_crd.crd()["spec"]["versions"]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Ready", "Reason", "Pools", "Domains", "Age"]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    props = spec["properties"]
    rules = [r["rule"] for r in spec["x-kubernetes-validations"]]
    assert rules == ["size(self.domains) > 0"]
    assert props["apiKeys"]["x-kubernetes-list-map-keys"] == ["id"]  # ids unique
    assert props["webhooks"]["x-kubernetes-list-map-keys"] == ["id"]
    quota_rule = props["quotas"]["x-kubernetes-validations"][0]["rule"]
    assert "self.perDay >= self.perHour" in quota_rule
    url_rule = props["webhooks"]["items"]["x-kubernetes-validations"][0]["rule"]
    assert "getScheme() in ['http', 'https']" in url_rule
    assert props["suspended"]["default"] is False
    assert with_defaults({"pools": ["p"], "domains": ["a.test"]})["suspended"] is False


def test_cli_prints_the_tenant_crd(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    assert cli.run(parser.parse_args(["--print-tenant-crd"])) == 0
    doc = yaml.safe_load(capsys.readouterr().out)
    assert doc["metadata"]["name"] == "sendingtenants.mailsluice.io"


# --- one round with a fake API server ------------------------------------------------------


class FakeKube:
    def __init__(self, *secrets: dict[str, Any], refuse: KubeError | None = None) -> None:
        self.secrets = {s["metadata"]["name"]: s for s in secrets}
        self.applied: list[dict[str, Any]] = []
        self.refuse = refuse

    async def apply(self, manifest: Any) -> dict[str, Any]:
        self.applied.append(dict(manifest))
        return dict(manifest)

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        assert kind in {"Secret", "Deployment"} and namespace == "mail"
        if kind == "Deployment":
            return {"metadata": {"name": name, "uid": "u-1"}} if name == "op" else None
        if self.refuse:
            raise self.refuse
        return self.secrets.get(name)

    def file(self) -> Any:
        data = self.applied[-1]["data"][FILE_KEY]
        return yaml.safe_load(base64.b64decode(data))


async def _round(kube: FakeKube, *bodies: dict[str, Any]) -> Any:
    return await reconcile_tenants(
        "mail", bodies, kube=kube, secret_name="mailsluice-tenants", now_iso=NOW, retry_s=30
    )


def _cond(status: dict[str, Any], type_: str) -> tuple[str, str]:
    (found,) = [c for c in status["conditions"] if c["type"] == type_]
    return found["status"], found["reason"]


ACME = tenant_body(
    "acme",
    pools=["bulk", "default"],
    domains=["acme.test", "*.acme.test"],
    apiKeys=[
        {"id": "acmekey1", "hash": DIGEST_A},
        {"id": "acmekey2", "secretRef": {"name": "acme-keys", "key": "next"}},
    ],
    smtp={
        "acme-app": {"passwordHash": SCRYPT},
        "acme-ops": {"secretRef": {"name": "acme-keys", "key": "ops"}},
    },
    quotas={"perHour": 100, "perDay": 1000},
    webhooks=[
        {
            "id": "main",
            "url": "https://hooks.acme.test/in",
            "events": ["delivered", "bounce"],
            "secretsRef": {"name": "acme-hooks", "keys": ["2-next", "1-current"]},
        }
    ],
)
BETA = tenant_body(
    "beta",
    created="2026-12-02T10:00:00Z",
    apiKeys=[{"id": "betakey1", "hash": DIGEST_B}],
    webhooks=[
        {
            "id": "all",
            "url": "http://hooks.beta.test/",
            "events": ["complaint"],
            "secretsRef": {"name": "beta-hooks"},
        }
    ],
)
ACME_SECRETS = (
    secret("acme-keys", next=new_key("acmekey2")[1], ops=SCRYPT),
    secret("acme-hooks", **{"1-current": WHSEC, "2-next": WHSEC_NEXT}),
    secret("beta-hooks", b=WHSEC_NEXT, a=WHSEC),
)


async def test_two_tenants_render_into_one_file_that_parse_tenants_reads(tmp_path: Path) -> None:
    kube = FakeKube(*ACME_SECRETS)
    out = await _round(kube, BETA, ACME)
    (applied,) = kube.applied
    assert (applied["kind"], applied["metadata"]["name"]) == ("Secret", "mailsluice-tenants")
    tenants = parse_tenants(kube.file())
    assert list(tenants) == ["acme", "beta"]
    acme = tenants["acme"]
    assert acme.default_pool == "bulk"
    assert acme.owned.owns_address("x@mail.acme.test")
    assert [k.id for k in acme.api_keys] == ["acmekey1", "acmekey2"]
    assert acme.smtp["acme-ops"].password == SCRYPT
    assert (acme.quotas.per_hour, acme.quotas.per_day) == (100, 1000)
    assert acme.webhooks[0].secrets == (WHSEC_NEXT, WHSEC)  # the order keys gives
    assert tenants["beta"].webhooks[0].secrets == (WHSEC, WHSEC_NEXT)  # key name order
    for name in ("acme", "beta"):
        assert _cond(out.statuses[name], "Ready") == ("True", "Rendered")
        assert _cond(out.statuses[name], "Stalled") == ("False", "Rendered")
        assert out.statuses[name]["observedGeneration"] == 1
    # What the API and ingest do with the mounted file.
    path = tmp_path / FILE_KEY
    path.write_bytes(base64.b64decode(applied["data"][FILE_KEY]))
    registry = Registry(str(path))
    found = registry.by_api_key(KEY_A)
    assert found is not None and found.name == "acme"


async def test_the_same_tenants_render_the_same_bytes_and_no_new_status() -> None:
    kube = FakeKube(*ACME_SECRETS)
    first = await _round(kube, ACME, BETA)
    stored = {**ACME, "status": first.statuses["acme"]}
    again = await _round(kube, stored, {**BETA, "status": first.statuses["beta"]})
    assert kube.applied[0] == kube.applied[1]
    assert not status_changed(stored["status"], again.statuses["acme"])
    assert again.events == {"acme": [], "beta": []}
    assert [e.reason for e in first.events["acme"]] == ["Rendered"]


async def test_a_deleted_tenant_leaves_the_file() -> None:
    kube = FakeKube(*ACME_SECRETS)
    await _round(kube, ACME, BETA)
    await _round(kube, BETA)
    assert list(parse_tenants(kube.file())) == ["beta"]
    await _round(kube)
    assert parse_tenants(kube.file()) == {}


@pytest.mark.parametrize(
    ("spec", "reason", "needle"),
    [
        ({"domains": ["Mail.ACME.test"]}, "DomainClaimed", "overlaps *.acme.test"),
        ({"domains": ["*.eu.acme.test"]}, "DomainClaimed", "overlaps *.acme.test"),
        ({"smtp": {"acme-app": {"passwordHash": SCRYPT}}}, "SmtpUserClaimed", "acme-app"),
        ({"apiKeys": [{"id": "acmekey1", "hash": DIGEST_B}]}, "ApiKeyIdClaimed", "acmekey1"),
    ],
)
async def test_a_name_an_older_tenant_claims_stalls_the_newer(
    spec: dict[str, Any], reason: str, needle: str
) -> None:
    kube = FakeKube(*ACME_SECRETS)
    newer = tenant_body("zeta", created="2026-12-02T00:00:00Z", **spec)
    out = await _round(kube, newer, ACME)
    assert list(parse_tenants(kube.file())) == ["acme"]
    assert _cond(out.statuses["acme"], "Ready") == ("True", "Rendered")
    assert _cond(out.statuses["zeta"], "Stalled") == ("True", reason)
    assert _cond(out.statuses["zeta"], "Ready") == ("False", reason)
    message = out.statuses["zeta"]["conditions"][0]["message"]
    assert needle in message and "older tenant acme" in message
    assert [(e.type, e.reason) for e in out.events["zeta"]] == [("Warning", reason)]
    # Age decides, not the order of the list: an older "zeta" keeps its names.
    older = tenant_body("zeta", created="2026-11-01T00:00:00Z", **spec)
    out = await _round(FakeKube(*ACME_SECRETS), ACME, older)
    assert _cond(out.statuses["zeta"], "Ready") == ("True", "Rendered")
    assert _cond(out.statuses["acme"], "Stalled") == ("True", reason)


def test_claims_of_unrelated_domains_do_not_overlap() -> None:
    mine = Claims.of({"domains": ["acme.test.example", "*.b.other.test", "*.c.test"]})
    theirs = Claims.of({"domains": ["acme.test", "*.c.other.test", "c.test"]})
    check_claims("b", mine, [("a", theirs)])  # *.c.test is not c.test itself
    with pytest.raises(PermanentProblem, match=r"\*.b.other.test overlaps \*.other.test"):
        check_claims("b", mine, [("a", Claims.of({"domains": ["*.other.test"]}))])


async def test_a_missing_secret_is_retried_not_stalled_and_recovers() -> None:
    out = await _round(FakeKube(), BETA)
    assert _cond(out.statuses["beta"], "Ready") == ("False", "SecretNotFound")
    assert _cond(out.statuses["beta"], "Stalled") == ("False", "Retrying")
    assert "retrying every 30s" in out.statuses["beta"]["conditions"][0]["message"]
    kube = FakeKube(secret("beta-hooks"), secret("acme-keys"), secret("acme-hooks"))
    out = await _round(kube, ACME)
    assert _cond(out.statuses["acme"], "Ready") == ("False", "SecretKeyNotFound")
    assert parse_tenants(kube.file()) == {}
    later = await _round(FakeKube(*ACME_SECRETS), {**BETA, "status": out.statuses["acme"]})
    assert _cond(later.statuses["beta"], "Ready") == ("True", "Rendered")
    assert [(e.type, e.reason) for e in later.events["beta"]] == [("Normal", "Rendered")]


@pytest.mark.parametrize(
    ("secrets", "needle"),
    [
        ((secret("beta-hooks", a="not-a-webhook-secret"),), "whsec_"),
        ((secret("beta-hooks"),), "webhooks.0.secrets"),  # an empty Secret: no secret at all
    ],
)
async def test_secret_values_the_file_refuses_stall_the_tenant(
    secrets: tuple[dict[str, Any], ...], needle: str
) -> None:
    kube = FakeKube(*secrets)
    out = await _round(kube, BETA)
    assert _cond(out.statuses["beta"], "Stalled") == ("True", "InvalidTenant")
    assert needle in out.statuses["beta"]["conditions"][1]["message"]
    assert parse_tenants(kube.file()) == {}


async def test_a_suspended_tenant_leaves_the_file_but_keeps_its_domains() -> None:
    kube = FakeKube(*ACME_SECRETS)
    suspended = {**ACME, "spec": {**ACME["spec"], "suspended": True}}
    thief = tenant_body("thief", created="2026-12-05T00:00:00Z", domains=["acme.test"])
    out = await _round(kube, suspended, thief)
    assert parse_tenants(kube.file()) == {}
    assert _cond(out.statuses["acme"], "Ready") == ("False", "Suspended")
    assert _cond(out.statuses["acme"], "Stalled") == ("False", "Suspended")
    assert _cond(out.statuses["thief"], "Stalled") == ("True", "DomainClaimed")


async def test_an_invalid_name_stalls() -> None:
    out = await _round(FakeKube(), tenant_body("Not_A_Name"))
    assert _cond(out.statuses["Not_A_Name"], "Stalled") == ("True", "InvalidName")


async def test_an_unreadable_secret_writes_nothing() -> None:
    kube = FakeKube(refuse=KubeError(403, "forbidden"))
    with pytest.raises(KubeError):
        await _round(kube, ACME)
    assert kube.applied == []


async def test_the_secret_is_owned_by_the_operators_deployment_when_named() -> None:
    """So `helm uninstall` (which deletes that Deployment) leaves no tenants Secret behind."""
    for owner, expected in (
        ("op", [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "op", "uid": "u-1"}]),
        ("gone", None),
        ("", None),
    ):
        kube = FakeKube()
        await reconcile_tenants(
            "mail", [], kube=kube, secret_name="s", now_iso=NOW, retry_s=30, owner=owner
        )
        assert kube.applied[0]["metadata"].get("ownerReferences") == expected
