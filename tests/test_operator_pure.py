"""Pure parts of the operator: warm-up, scaling, conditions, rendering, CRD schema, reconcile."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from mailsluice.config import KafkaSettings
from mailsluice.kafka import TopicChange
from mailsluice_operator import crd, render, scaling, status, warmup
from mailsluice_operator.kafka_admin import KafkaUnavailable, PoolKafkaState, lag_of
from mailsluice_operator.reconcile import reconcile, referenced_secrets
from mailsluice_operator.settings import OperatorSettings

REPO = Path(__file__).resolve().parents[1]
TODAY = dt.date(2026, 11, 26)


# --- warm-up -------------------------------------------------------------------------------


def test_presets_are_the_workers_ramps() -> None:
    start = dt.date(2026, 1, 1)
    sg = warmup.schedule({"preset": "sendgrid-like"})
    assert warmup.state_on(sg, start, start) == warmup.WarmupState(1, 20 * 24)  # 20 an hour
    ses = warmup.schedule({"preset": "ses-45-day"})
    assert warmup.state_on(ses, start, start + dt.timedelta(days=44)) == warmup.WarmupState(
        45, 50_000
    )
    assert warmup.state_on(ses, start, start + dt.timedelta(days=45)) == warmup.WarmupState(
        46, None
    )
    assert warmup.state_on(ses, start, start - dt.timedelta(days=3)).day == 1
    assert warmup.schedule({"preset": "none"}) is None
    assert warmup.state_on(None, start, start + dt.timedelta(days=3)) == warmup.WarmupState(4, None)


def test_custom_table_holds_until_next_row() -> None:
    table = warmup.schedule({"table": [{"day": 5, "volume": 5000}, {"day": 1, "volume": 100}]})
    start = dt.date(2026, 1, 1)
    assert warmup.state_on(table, start, dt.date(2026, 1, 4)).cap == 100
    assert warmup.state_on(table, start, dt.date(2026, 1, 5)).cap == 5000
    assert warmup.state_on(table, start, dt.date(2026, 1, 6)).cap is None


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ({"preset": "yahoo-magic"}, "unknown warm-up preset"),
        ({"preset": "ses-45-day", "table": [{"day": 1, "volume": 1}]}, "not both"),
        ({"table": [{"day": 1, "volume": 1}, {"day": 1, "volume": 2}]}, "twice"),
        ({"table": [{"day": 0, "volume": 1}]}, "start at 1"),
    ],
)
def test_bad_warmup_specs_raise(spec: dict[str, Any], needle: str) -> None:
    with pytest.raises(warmup.WarmupError, match=needle):
        warmup.schedule(spec)


def test_start_date_defaults_to_creation_and_rejects_garbage() -> None:
    assert warmup.start_date({}, "2026-03-04T05:06:07Z") == dt.date(2026, 3, 4)
    assert warmup.start_date({"startDate": "2026-01-02"}, None) == dt.date(2026, 1, 2)
    with pytest.raises(warmup.WarmupError):
        warmup.start_date({"startDate": "soon"}, None)


def test_budget_workers() -> None:
    assert warmup.workers_for_budget(None, 0, 50) is None
    assert warmup.workers_for_budget(480, 0, 50) == 1
    assert warmup.workers_for_budget(480, 480, 50) == 0
    assert warmup.workers_for_budget(86400 * 500, 0, 50) == 10


# --- scaling -------------------------------------------------------------------------------


def _inputs(**kw: Any) -> scaling.ScaleInputs:
    base: dict[str, Any] = dict(
        lag=0, lag_per_worker=100, min_workers=1, max_workers=8, partitions=6
    )
    base.update(kw)
    return scaling.ScaleInputs(**base)


@pytest.mark.parametrize(
    ("kw", "want"),
    [
        ({"lag": 0}, 1),
        ({"lag": 1}, 1),
        ({"lag": 101}, 2),
        ({"lag": 350}, 4),
        ({"lag": 10_000}, 6),  # never more than partitions
        ({"lag": 10_000, "partitions": 12}, 8),  # nor more than max
        ({"lag": 0, "min_workers": 0}, 0),
        ({"lag": 10_000, "budget_workers": 2}, 2),
        ({"lag": 10_000, "budget_workers": 0, "min_workers": 1}, 1),  # min still holds
        ({"lag": 10_000, "pinned": 3}, 3),
        ({"lag": 0, "pinned": 9}, 6),
    ],
)
def test_recommend_is_kedas_formula_within_bounds(kw: dict[str, Any], want: int) -> None:
    assert scaling.recommend(_inputs(**kw))[0] == want


def test_scale_up_is_immediate_and_down_waits_for_the_window() -> None:
    history: scaling.History = ()
    seen = []
    for t, lag in [(0, 500), (10, 0), (20, 0), (59, 0), (61, 0), (70, 800), (71, 0)]:
        decision, history = scaling.decide(_inputs(lag=lag), history, float(t), 60.0)
        seen.append(decision.replicas)
    assert seen == [5, 5, 5, 5, 1, 6, 6]
    assert all(t > 71 - 60 for t, _ in history)


def test_pinned_replicas_skip_stabilisation() -> None:
    decision, history = scaling.decide(_inputs(pinned=2), ((0.0, 6),), 1.0, 300.0)
    assert decision.replicas == 2 and history == ((1.0, 2),)


# --- conditions ----------------------------------------------------------------------------


def test_conditions_follow_health_and_keep_transition_times() -> None:
    healthy = status.conditions_for(status.Health(desired=2, ready=2, updated=2))
    first = status.merge_conditions(None, healthy, generation=3, now="T1")
    assert [(c["type"], c["status"], c["reason"]) for c in first] == [
        ("Ready", "True", "WorkersReady"),
        ("Reconciling", "False", "Reconciled"),
        ("Stalled", "False", "Progressing"),
    ]
    assert {c["observedGeneration"] for c in first} == {3}
    again = status.merge_conditions(first, healthy, generation=4, now="T2")
    assert [c["lastTransitionTime"] for c in again] == ["T1", "T1", "T1"]
    broken = status.conditions_for(status.Health(problem=("KafkaUnavailable", "down")))
    after = status.merge_conditions(again, broken, generation=4, now="T3")
    assert [(c["status"], c["lastTransitionTime"]) for c in after] == [
        ("False", "T3"),
        ("False", "T1"),
        ("True", "T3"),
    ]
    assert after[2]["reason"] == "KafkaUnavailable"


def test_conditions_rolling_zero_and_shrink() -> None:
    rolling = status.conditions_for(status.Health(desired=3, ready=1, updated=1))
    assert (rolling[0].status, rolling[1].status, rolling[1].reason) == (
        True,
        True,
        "WorkersRolling",
    )
    assert status.conditions_for(status.Health(desired=0))[0].reason == "ScaledToZero"
    assert not status.conditions_for(status.Health(desired=1))[0].status
    shrink = status.conditions_for(
        status.Health(desired=1, ready=1, updated=1, warning=("PartitionsShrinkRefused", "m"))
    )
    assert shrink[0].status and shrink[2].status and shrink[2].reason == "PartitionsShrinkRefused"


# --- rendering -----------------------------------------------------------------------------

POOL_BODY: dict[str, Any] = {
    "apiVersion": "mailsluice.io/v1alpha1",
    "kind": "SendingPool",
    "metadata": {
        "name": "bulk-a",
        "namespace": "mail",
        "uid": "1234",
        "generation": 2,
        "creationTimestamp": "2026-11-20T10:00:00Z",
    },
    "spec": {
        "ehloName": "mta1.example.com",
        "sourceAddresses": ["192.0.2.10", "192.0.2.11"],
        "stream": "bulk",
        "warmup": {"preset": "ses-45-day"},
        "shaping": [{"match": "google", "messagesPerSecond": 5, "maxConnections": 3}],
        "partitions": 6,
        "minWorkers": 1,
        "maxWorkers": 4,
        "lagPerWorker": 100,
        "workerTemplate": {
            "image": "registry.example/mailsluice:1.2",
            "env": [
                {"name": "MAILSLUICE_LOG_LEVEL", "value": "DEBUG"},
                {"name": "MAILSLUICE_DELIVERY_HTTP_HOST", "value": "::"},
            ],
            "nodeSelector": {"mail.example/ips": "a"},
            "tolerations": [{"key": "mail", "operator": "Exists"}],
        },
    },
}

KAFKA = KafkaSettings(bootstrap="kafka.mail:9092", replication_factor=3)
OP = OperatorSettings(kafka_secret="kafka-creds")


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
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["MAILSLUICE_KAFKA_BOOTSTRAP"] == "kafka.mail:9092"
    assert env["MAILSLUICE_KAFKA_REPLICATION_FACTOR"] == "3"
    assert env["MAILSLUICE_DELIVERY_POOL"] == "bulk-a"
    assert env["MAILSLUICE_OUTBOUND_EHLO_NAME"] == "mta1.example.com"
    assert env["MAILSLUICE_OUTBOUND_SOURCE_ADDRESS"] == "192.0.2.10"  # one bind address
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
    assert {"name": "policy", "configMap": {"name": "mailsluice-pool-bulk-a"}} in pod["volumes"]


def test_spec_hash_rolls_workers_on_spec_change_only() -> None:
    def hash_of(pool: render.Pool, replicas: int = 1) -> str:
        dep = render.render_deployment(pool, replicas, KAFKA, OP)
        return str(dep["spec"]["template"]["metadata"]["annotations"]["mailsluice.io/spec-hash"])

    base = hash_of(_pool())
    assert hash_of(_pool(), 4) == base
    assert hash_of(_pool(replicas=2)) == base
    assert hash_of(_pool(ehloName="mta2.example.com")) != base
    assert hash_of(_pool(shaping=[])) != base


def test_configmap_and_pdb() -> None:
    cm = render.render_configmap(_pool())
    policy = yaml.safe_load(cm["data"]["policy.yaml"])
    assert policy["pool"] == "bulk-a" and policy["stream"] == "bulk"
    assert policy["shaping"][0]["match"] == "google"
    assert policy["warmup"] == {"preset": "ses-45-day"}
    pdb = render.render_pdb(_pool())
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == render.selector_labels("bulk-a")
    assert render.selector_string("bulk-a") == (
        "app.kubernetes.io/component=delivery,app.kubernetes.io/name=mailsluice,"
        "mailsluice.io/pool=bulk-a"
    )


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
    assert spec["properties"]["stream"]["enum"] == ["transactional", "bulk"]

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


# --- lag and reconcile with fakes ----------------------------------------------------------


def test_lag_counts_uncommitted_partitions_from_earliest() -> None:
    from aiokafka import TopicPartition

    t0, t1, t2 = (TopicPartition("q", i) for i in range(3))
    ends = {t0: 100, t1: 50, t2: 10}
    assert lag_of(ends, {t0: 0, t1: 20, t2: 0}, {t0: 90, t1: -1}) == 10 + 30 + 10


class FakeKube:
    def __init__(self, secrets: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.applied: list[dict[str, Any]] = []
        self.secrets = secrets

    async def apply(self, manifest: Any) -> dict[str, Any]:
        self.applied.append(manifest)
        return {**manifest, "status": {"readyReplicas": 1, "updatedReplicas": 1}}

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return {"kind": kind} if name in self.secrets else None


def _kafka(lag: int, partitions: int = 6, action: str = "unchanged") -> Any:
    async def round_(topic: str, wanted: int, group: str) -> PoolKafkaState:
        assert topic == "mailsluice.queue.bulk-a" and group == "mailsluice.delivery.bulk-a"
        return PoolKafkaState(TopicChange(topic, action, partitions), partitions, lag)

    return round_


async def _reconcile(body: dict[str, Any], kube: FakeKube, kafka_round: Any) -> Any:
    return await reconcile(
        body,
        kube=kube,
        kafka_round=kafka_round,
        op=OperatorSettings(),
        kafka=KAFKA,
        monotonic=100.0,
        today=TODAY,
        now_iso="2026-11-26T00:00:00Z",
        history=(),
    )


async def test_reconcile_applies_children_and_reports() -> None:
    kube = FakeKube()
    out = await _reconcile(POOL_BODY, kube, _kafka(lag=250))
    assert [m["kind"] for m in kube.applied] == ["ConfigMap", "Deployment", "PodDisruptionBudget"]
    st = out.status
    assert st["replicas"] == 1  # ses-45-day day 7: the warm-up budget keeps one worker busy
    assert (st["lag"], st["partitions"], st["warmupDay"]) == (250, 6, 7)
    ses = warmup.schedule({"preset": "ses-45-day"})
    assert ses is not None and st["todayCap"] == ses.daily(7)
    assert st["observedGeneration"] == 2
    ready = st["conditions"][0]
    assert (ready["type"], ready["status"]) == ("Ready", "True")
    warm = {**POOL_BODY, "spec": {**POOL_BODY["spec"], "warmup": {"preset": "none"}}}
    out = await _reconcile(warm, FakeKube(), _kafka(lag=250))
    assert out.status["replicas"] == 3 and out.status["todayCap"] is None


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ({"warmup": {"preset": "bogus"}}, "InvalidWarmup"),
        ({"minWorkers": 5, "maxWorkers": 2}, "InvalidLimits"),
        ({"maxWorkers": 9}, "InvalidLimits"),
        (
            {
                "workerTemplate": {
                    "env": [
                        {"name": "X", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "k"}}}
                    ]
                }
            },
            "SecretNotFound",
        ),
    ],
)
async def test_bad_specs_stall_with_an_event(spec: dict[str, Any], reason: str) -> None:
    body = {**POOL_BODY, "spec": {**POOL_BODY["spec"], **spec}}
    kube = FakeKube()
    out = await _reconcile(body, kube, _kafka(lag=0))
    conds = {c["type"]: c for c in out.status["conditions"]}
    assert conds["Stalled"]["status"] == "True" and conds["Stalled"]["reason"] == reason
    assert conds["Ready"]["status"] == "False"
    assert [(e.type, e.reason) for e in out.events] == [("Warning", reason)]
    assert kube.applied == []
    again = await _reconcile({**body, "status": out.status}, kube, _kafka(lag=0))
    assert again.events == []  # no repeat on the next tick


async def test_kafka_down_and_shrink_are_conditions() -> None:
    async def down(topic: str, wanted: int, group: str) -> PoolKafkaState:
        raise KafkaUnavailable("Kafka did not answer within 1s")

    kube = FakeKube()
    out = await _reconcile(POOL_BODY, kube, down)
    stalled = out.status["conditions"][2]
    assert (stalled["status"], stalled["reason"]) == ("True", "KafkaUnavailable")
    assert len(kube.applied) == 3  # children still follow the spec
    out = await _reconcile(POOL_BODY, FakeKube(), _kafka(0, partitions=24, action="shrink-refused"))
    conds = {c["type"]: c for c in out.status["conditions"]}
    assert conds["Stalled"]["reason"] == "PartitionsShrinkRefused"
    assert conds["Ready"]["status"] == "True"
    assert out.status["partitions"] == 24


def test_kafka_ca_secret_is_mounted_and_checked() -> None:
    op = OperatorSettings(kafka_ca_secret="kafka-ca", kafka_ca_key="bundle.pem")
    dep = render.render_deployment(_pool(), 1, KAFKA, op)
    pod = dep["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["MAILSLUICE_KAFKA_SSL_CAFILE"] == "/etc/mailsluice/kafka-ca/bundle.pem"
    assert {"name": "kafka-ca", "secret": {"secretName": "kafka-ca"}} in pod["volumes"]
    assert any(m["name"] == "kafka-ca" for m in container["volumeMounts"])
    assert "kafka-ca" in referenced_secrets({}, op)


def test_cli_prints_the_crd(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from mailsluice_operator import cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    assert cli.run(parser.parse_args(["--print-crd"])) == 0
    assert yaml.safe_load(capsys.readouterr().out)["metadata"]["name"] == (
        "sendingpools.mailsluice.io"
    )


def _ledger(
    pool: str, scope: str, window: float, used: int, source: str = ""
) -> tuple[bytes, bytes]:
    value = {"v": 1, "pool": pool, "source": source, "scope": scope, "window": window, "used": used}
    return f"{pool}/{source}/{scope}".encode(), json.dumps(value).encode()


def test_today_usage_sums_the_workers_pool_wide_records() -> None:
    midnight = dt.datetime(2026, 11, 26, tzinfo=dt.UTC).timestamp()
    records = dict(
        [
            _ledger("bulk-a", "*@0", midnight, 70),
            _ledger("bulk-a", "*@1", midnight, 30),
            _ledger("bulk-a", "*@2", midnight - 86400, 999),  # yesterday
            _ledger("bulk-a", "google", midnight, 50),  # a provider scope, counted in *@N too
            _ledger("bulk-a", "*@0", midnight, 5, source="192.0.2.10"),  # per-source ramp
            _ledger("bulk-b", "*@0", midnight, 7),
            (b"garbage", b"{"),
        ]
    )
    ses = warmup.schedule({"preset": "ses-45-day"})
    assert warmup.today_usage(records, "bulk-a", ses, TODAY) == 100
    assert warmup.today_usage({}, "bulk-a", ses, TODAY) == 0
    hourly = warmup.schedule({"preset": "sendgrid-like"})
    assert warmup.today_usage(records, "bulk-a", hourly, TODAY) is None
    assert warmup.today_usage(records, "bulk-a", None, TODAY) is None


async def test_spent_warmup_budget_keeps_only_min_workers() -> None:
    body = {**POOL_BODY, "spec": {**POOL_BODY["spec"], "minWorkers": 0}}
    ses = warmup.schedule({"preset": "ses-45-day"})
    assert ses is not None
    cap = ses.daily(7)
    assert cap is not None
    midnight = dt.datetime(2026, 11, 26, tzinfo=dt.UTC).timestamp()

    async def spent(topic: str, wanted: int, group: str) -> PoolKafkaState:
        records = dict([_ledger("bulk-a", "*@0", midnight, cap)])
        return PoolKafkaState(TopicChange(topic, "unchanged", 6), 6, 5000, records)

    out = await _reconcile(body, FakeKube(), spent)
    assert (out.status["todayUsage"], out.status["todayCap"]) == (cap, cap)
    assert out.status["replicas"] == 0
    assert "warm-up budget" in out.status["lastScaleReason"]
