"""Pure parts of the operator: rendering a pool's children, the CRD and its CLI output."""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

import pytest
import yaml
from support.operator_pool import KAFKA, OP, POOL_BODY
from support.paths import REPO

from mailsluice.consent.settings import UnsubscribeSettings
from mailsluice.delivery.shaping.settings import ShapingSettings, build_shaper
from mailsluice.tracking.settings import TrackingSettings
from mailsluice_operator import crd, render, warmup
from mailsluice_operator.links import TRACKING_KEYS_DIR, UNSUBSCRIBE_KEYS_DIR, signed_links
from mailsluice_operator.reconcile import referenced_secrets
from mailsluice_operator.settings import OperatorSettings
from mailsluice_operator.spec import with_defaults

# --- rendering -----------------------------------------------------------------------------


def _pool(**spec: Any) -> render.Pool:
    body = {**POOL_BODY, "spec": {**POOL_BODY["spec"], **spec}}
    return render.Pool.from_body(body)


def test_deployment_runs_delivery_for_the_pool_hardened() -> None:
    dep = render.render_deployment(_pool(), 3, KAFKA, OP)
    assert dep["metadata"]["name"] == "mailsluice-delivery-bulk-a"
    owner = dep["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("SendingPool", "1234", True)
    spec = dep["spec"]
    assert spec["replicas"] == 3
    assert spec["selector"]["matchLabels"]["mailsluice.io/pool"] == "bulk-a"
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["delivery", "--pool", "bulk-a"]
    assert container["image"] == "registry.example/mailsluice:1.2"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MAILSLUICE_KAFKA_BOOTSTRAP"] == "kafka.mail:9092"
    assert env["MAILSLUICE_KAFKA_REPLICATION_FACTOR"] == "3"
    assert env["MAILSLUICE_DELIVERY_POOL"] == "bulk-a"
    assert env["MAILSLUICE_OUTBOUND_EHLO_NAME"] == "mta1.example.com"
    assert env["MAILSLUICE_OUTBOUND_SOURCE_ADDRESSES"] == "192.0.2.10,192.0.2.11"  # every one
    assert env["MAILSLUICE_LOG_LEVEL"] == "DEBUG"
    assert env["MAILSLUICE_DELIVERY_HTTP_HOST"] == "::"  # the template wins by name
    assert len(env) == len(container["env"])  # no duplicate names (server-side apply refuses)
    assert container["envFrom"] == [{"secretRef": {"name": "kafka-creds"}}]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] > 0
    assert pod["nodeSelector"] == {"mail.example/ips": "a"}
    assert pod["tolerations"] == [{"key": "mail", "operator": "Exists"}]
    assert [v["name"] for v in pod["volumes"]] == ["tmp"]  # the spec travels as env only


def _template_hash(pool: render.Pool, replicas: int = 1) -> str:
    dep = render.render_deployment(pool, replicas, KAFKA, OP)
    return str(dep["spec"]["template"]["metadata"]["annotations"]["mailsluice.io/spec-hash"])


def test_spec_hash_rolls_workers_on_spec_change_only() -> None:
    base = _template_hash(_pool())
    assert _template_hash(_pool(), 4) == base
    assert _template_hash(_pool(replicas=2)) == base
    assert _template_hash(_pool(ehloName="mta2.example.com")) != base
    assert _template_hash(_pool(shaping=[])) != base
    assert _template_hash(_pool(sourceAddresses=["192.0.2.10"])) != base  # workers bind anew
    # Scaling is the operator's business: no worker restarts for it.
    assert (
        _template_hash(_pool(lagPerWorker=7, maxWorkers=9, scaleDownStabilizationSeconds=5)) == base
    )


@pytest.mark.parametrize(
    ("addresses", "rendered"),
    [
        (["192.0.2.10", "2001:db8::10", "192.0.2.11"], "192.0.2.10,2001:db8::10,192.0.2.11"),
        (["192.0.2.10"], "192.0.2.10"),
        ([], ""),
        (None, ""),
    ],
)
def test_worker_env_has_every_source_address(addresses: list[str] | None, rendered: str) -> None:
    env = render.worker_env(_pool(sourceAddresses=addresses), KAFKA, OP)
    values = {e["name"]: e.get("value") for e in env}
    assert values["MAILSLUICE_OUTBOUND_SOURCE_ADDRESSES"] == rendered
    assert "MAILSLUICE_OUTBOUND_SOURCE_ADDRESS" not in values


def test_a_worker_is_a_static_group_member_named_after_its_pod() -> None:
    env = {e["name"]: e for e in render.worker_env(_pool(), KAFKA, OP)}
    assert env["MAILSLUICE_KAFKA_GROUP_INSTANCE_ID"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.name"}
    }


def test_every_pool_gets_the_unsubscribe_links_and_keys_the_operator_has() -> None:
    assert signed_links({}, OP) == []  # no link base: no List-Unsubscribe
    op = OperatorSettings(
        unsubscribe_url="https://u.example.com",
        unsubscribe_keys_secret="unsub-keys",
        unsubscribe_mailto_domain="u.example.com",
    )
    dep = render.render_deployment(_pool(), 1, KAFKA, op)
    pod = dep["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MAILSLUICE_UNSUBSCRIBE_URL"] == "https://u.example.com"
    assert env["MAILSLUICE_UNSUBSCRIBE_KEYS_DIR"] == UNSUBSCRIBE_KEYS_DIR
    volume = {
        "name": "unsubscribe-keys",
        "secret": {"secretName": "unsub-keys", "defaultMode": 288},
    }
    assert volume in pod["volumes"]
    assert any(m["mountPath"] == UNSUBSCRIBE_KEYS_DIR for m in container["volumeMounts"])
    assert "unsub-keys" in referenced_secrets({}, op)
    # what the worker makes of it: the links go on, with keys read from the mount
    settings = UnsubscribeSettings.model_validate(
        {
            k.removeprefix("MAILSLUICE_UNSUBSCRIBE_").lower(): v
            for k, v in env.items()
            if k.startswith("MAILSLUICE_UNSUBSCRIBE_")
        }
    )
    assert settings.enabled and settings.keys_dir == UNSUBSCRIBE_KEYS_DIR


TRACKING_OP = OperatorSettings(
    tracking_url="https://t.example.com",
    tracking_keys_secret="track-keys",
    tracking_active_key="t2",
    tracking_default="opens",
)


def _worker_settings(env: dict[str, Any]) -> TrackingSettings:
    """What the worker makes of the MAILSLUICE_TRACKING_* it is given."""
    prefix = "MAILSLUICE_TRACKING_"
    values = {k.removeprefix(prefix).lower(): v for k, v in env.items() if k.startswith(prefix)}
    return TrackingSettings.model_validate(values)


def test_every_pool_gets_the_tracking_links_and_keys_the_operator_has() -> None:
    assert signed_links({}, OperatorSettings(tracking_url="https://t.example.com")) == []
    assert signed_links({}, OperatorSettings(tracking_keys_secret="track-keys")) == []
    dep = render.render_deployment(_pool(), 1, KAFKA, TRACKING_OP)
    pod = dep["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert len(env) == len(container["env"])
    assert env["MAILSLUICE_TRACKING_URL"] == "https://t.example.com"
    assert env["MAILSLUICE_TRACKING_KEYS_DIR"] == TRACKING_KEYS_DIR
    assert env["MAILSLUICE_TRACKING_ACTIVE_KEY"] == "t2"
    volume = {"name": "tracking-keys", "secret": {"secretName": "track-keys", "defaultMode": 288}}
    assert volume in pod["volumes"]
    mount = {"name": "tracking-keys", "mountPath": TRACKING_KEYS_DIR, "readOnly": True}
    assert mount in container["volumeMounts"]
    assert "track-keys" in referenced_secrets({}, TRACKING_OP)  # a missing Secret is reported
    settings = _worker_settings(env)
    assert settings.enabled and settings.keys_dir == TRACKING_KEYS_DIR
    assert (settings.default, settings.transactional) == ("opens", False)
    assert "MAILSLUICE_UNSUBSCRIBE_URL" not in env  # each service on its own settings


def test_a_pools_tracking_overrides_the_operators_default_for_its_workers() -> None:
    op = TRACKING_OP.model_copy(update={"tracking_transactional": True})
    env = {e["name"]: e.get("value") for e in render.worker_env(_pool(tracking="all"), KAFKA, op)}
    settings = _worker_settings(env)
    assert (settings.default, settings.transactional) == ("all", True)
    off = render.worker_env(_pool(tracking="off"), KAFKA, op)
    assert _worker_settings({e["name"]: e.get("value") for e in off}).default == "off"
    schema = crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert schema["properties"]["spec"]["properties"]["tracking"]["enum"] == [
        "off",
        "opens",
        "clicks",
        "all",
    ]


def test_unsubscribe_and_tracking_keys_mount_side_by_side() -> None:
    op = TRACKING_OP.model_copy(
        update={"unsubscribe_url": "https://u.example.com", "unsubscribe_keys_secret": "unsub"}
    )
    pod = render.render_deployment(_pool(), 1, KAFKA, op)["spec"]["template"]["spec"]
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert secrets == {"unsubscribe-keys": "unsub", "tracking-keys": "track-keys"}
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["unsubscribe-keys"] == UNSUBSCRIBE_KEYS_DIR
    assert mounts["tracking-keys"] == TRACKING_KEYS_DIR
    assert {"unsub", "track-keys"} <= set(referenced_secrets({}, op))


def test_pdb() -> None:
    pdb = render.render_pdb(_pool())
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == render.selector_labels("bulk-a")
    assert render.selector_string("bulk-a") == (
        "app.kubernetes.io/component=delivery,app.kubernetes.io/name=mailsluice,"
        "mailsluice.io/pool=bulk-a"
    )


def test_workers_get_the_warmup_of_each_address_as_pool_overrides() -> None:
    sources = [
        {"address": "192.0.2.10", "startDate": "2026-11-24"},
        {"address": "192.0.2.11", "warm": True},
    ]
    spec = {**POOL_BODY["spec"], "warmup": {"table": [{"day": 1, "volume": 5}], "sources": sources}}
    pool = render.Pool.from_body({**POOL_BODY, "spec": spec})
    env = {e["name"]: e.get("value") for e in render.worker_env(pool, KAFKA, OP)}
    overrides = env["MAILSLUICE_SHAPING_POOL_OVERRIDES"]
    assert json.loads(overrides)["warmup"] == {
        "start": "2026-11-20",  # no startDate: the pool's creation day
        "schedule": "custom",
        "table": {"1": 5},
        "period": "day",
        "sources": {"192.0.2.10": "2026-11-24", "192.0.2.11": "warm"},
    }
    # what the worker makes of it: the cold address warms up from its own day, the other not
    settings = ShapingSettings(pool_overrides=overrides)
    shaper = build_shaper(settings, "bulk-a", time.time, sources=("192.0.2.10", "192.0.2.11"))
    assert shaper.warmup is not None and list(shaper.warmup.trackers) == ["192.0.2.10"]
    assert shaper.warmup.trackers["192.0.2.10"].plan.start == dt.date(2026, 11, 24)
    no_ramp = {**POOL_BODY["spec"], "warmup": {"preset": "none"}}
    env = render.worker_env(render.Pool.from_body({**POOL_BODY, "spec": no_ramp}), KAFKA, OP)
    rules = [
        json.loads(e["value"]) for e in env if e["name"] == "MAILSLUICE_SHAPING_POOL_OVERRIDES"
    ]
    assert rules == [{"provider": {"google": {"connection_limit": 3, "max_message_rate": "5/s"}}}]
    neither = {**no_ramp, "shaping": []}
    env = render.worker_env(render.Pool.from_body({**POOL_BODY, "spec": neither}), KAFKA, OP)
    assert "MAILSLUICE_SHAPING_POOL_OVERRIDES" not in {e["name"] for e in env}


def test_kafka_ca_secret_is_mounted_and_checked() -> None:
    op = OperatorSettings(kafka_ca_secret="kafka-ca", kafka_ca_key="bundle.pem")
    dep = render.render_deployment(_pool(), 1, KAFKA, op)
    pod = dep["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MAILSLUICE_KAFKA_SSL_CAFILE"] == "/etc/mailsluice/kafka-ca/bundle.pem"
    assert {"name": "kafka-ca", "secret": {"secretName": "kafka-ca"}} in pod["volumes"]
    assert any(m["name"] == "kafka-ca" for m in container["volumeMounts"])
    assert "kafka-ca" in referenced_secrets({}, op)


# --- CRD -----------------------------------------------------------------------------------


def test_chart_crd_is_the_generated_one() -> None:
    path = REPO / "deploy/helm/mailsluice/crds/sendingpool.yaml"
    assert path.read_text() == crd.crd_yaml(), "regenerate: mailsluice operator --print-crd"


def test_crd_shape() -> None:
    doc = crd.crd()
    (version,) = doc["spec"]["versions"]
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Ready",
        "Workers",
        "Lag",
        "Warm-up day",
        "Age",
    ]
    schema = version["schema"]["openAPIV3Schema"]
    spec = schema["properties"]["spec"]
    rules = [r["rule"] for r in spec["x-kubernetes-validations"]]
    assert "self.minWorkers <= self.maxWorkers" in rules
    assert "self.maxWorkers <= self.partitions" in rules
    assert schema["properties"]["status"]["x-kubernetes-preserve-unknown-fields"] is True
    assert spec["properties"]["warmup"]["properties"]["preset"]["enum"] == list(warmup.PRESETS)

    def undocumented(node: Any, path: str) -> list[str]:
        found = []
        for name, child in (node.get("properties") or {}).items():
            if "description" not in child and path != ".spec.workerTemplate.resources":
                found.append(f"{path}.{name}")
            if child.get("type") == "object":
                found += undocumented(child, f"{path}.{name}")
            if child.get("type") == "array":
                found += undocumented(child["items"], f"{path}.{name}[]")
        return found

    assert undocumented(spec, ".spec") == []


def test_crd_schema_is_structural() -> None:
    """What the API server requires of a CRD schema, and pydantic's JSON Schema does not give."""

    def offences(node: Any, path: str) -> list[str]:
        if isinstance(node, list):
            return [o for i, item in enumerate(node) for o in offences(item, f"{path}[{i}]")]
        if not isinstance(node, dict):
            return []
        found = [f"{path}.{k}" for k in ("$ref", "$defs", "anyOf", "allOf", "title") if k in node]
        if node.get("additionalProperties") is True or (
            "exclusiveMinimum" in node
            and (node["exclusiveMinimum"] is not True or "minimum" not in node)
        ):
            found.append(path)
        if node.get("default", ...) is None:
            found.append(f"{path}.default")
        return found + [o for k, v in node.items() for o in offences(v, f"{path}.{k}")]

    schema = crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert offences(schema, "") == []
    spec = schema["properties"]["spec"]["properties"]
    assert spec["workerThroughput"]["minimum"] == 0
    assert spec["partitions"] == {
        "type": "integer",
        "format": "int32",
        "description": "Partitions of the pool's queue topic; grows, never shrinks.",
        "default": 12,
        "maximum": 1000,
        "minimum": 1,
    }
    env = spec["workerTemplate"]["properties"]["env"]["items"]
    assert env["x-kubernetes-preserve-unknown-fields"] is True and env["required"] == ["name"]


def test_defaults_come_from_the_crd_schema() -> None:
    assert with_defaults({"ehloName": "mta.example"}) == {
        "ehloName": "mta.example",
        "warmup": {"preset": "none"},
        "partitions": 12,
        "minWorkers": 1,
        "maxWorkers": 4,
        "lagPerWorker": 1000,
        "workerThroughput": 50,
        "scaleDownStabilizationSeconds": 300,
    }
    table = {"warmup": {"table": [{"day": 1, "volume": 5}]}, "partitions": 3}
    got = with_defaults(table)
    assert got["warmup"] == {"table": [{"day": 1, "volume": 5}], "preset": "none"}
    assert got["partitions"] == 3
    assert "preset" not in table["warmup"]  # the input is left as it was
    assert render.Pool.from_body(POOL_BODY).spec == with_defaults(POOL_BODY["spec"])


def test_cli_prints_the_crd(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from mailsluice_operator import cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    assert cli.run(parser.parse_args(["--print-crd"])) == 0
    assert yaml.safe_load(capsys.readouterr().out)["metadata"]["name"] == (
        "sendingpools.mailsluice.io"
    )


def test_dkim_keys_are_a_secret_mounted_into_the_workers() -> None:
    dkim = {"secretName": "dkim-keys", "domain": "mail.example.com", "scheduleKey": "rot.yaml"}
    pool = _pool(dkim=dkim)
    pod = render.render_deployment(pool, 1, KAFKA, OP)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MAILSLUICE_DKIM_KEYS_DIR"] == "/etc/mailsluice/dkim"
    assert env["MAILSLUICE_DKIM_DOMAIN"] == "mail.example.com"
    assert env["MAILSLUICE_DKIM_SCHEDULE_FILE"] == "/etc/mailsluice/dkim/rot.yaml"
    volume = {"name": "dkim", "secret": {"secretName": "dkim-keys", "defaultMode": 0o440}}
    assert volume in pod["volumes"]
    mount = {"name": "dkim", "mountPath": "/etc/mailsluice/dkim", "readOnly": True}
    assert mount in container["volumeMounts"]
    assert "dkim-keys" in referenced_secrets(pool.spec, OP)  # a missing Secret is reported
    # A pool without DKIM gets none of it; a changed DKIM section rolls the workers.
    plain = render.render_deployment(_pool(), 1, KAFKA, OP)["spec"]["template"]["spec"]
    assert not any(e["name"].startswith("MAILSLUICE_DKIM_") for e in plain["containers"][0]["env"])
    assert all(v["name"] != "dkim" for v in plain["volumes"])
    other = _pool(dkim={**dkim, "domain": "other.example.com"})
    assert _template_hash(pool) != _template_hash(other)


def test_the_crd_validates_the_dkim_section() -> None:
    schema = crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    dkim = schema["properties"]["spec"]["properties"]["dkim"]
    assert dkim["required"] == ["secretName"]
    assert set(dkim["properties"]) == {"secretName", "domain", "scheduleKey"}
