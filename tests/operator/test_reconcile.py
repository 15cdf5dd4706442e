"""Pure parts of the operator: reconcile with fake Kubernetes and Kafka, lag, the warm-up ledger."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from support.operator_pool import KAFKA, POOL_BODY

from mailsluice.contracts.warmup import WarmupUsage, encode_usage, record_key
from mailsluice.kafka.admin import TopicChange
from mailsluice_operator import warmup
from mailsluice_operator.kafka_admin import KafkaUnavailable, PoolKafkaState, lag_of
from mailsluice_operator.reconcile import KubeError, reconcile
from mailsluice_operator.settings import OperatorSettings

TODAY = dt.date(2026, 11, 26)


# --- lag and reconcile with fakes ----------------------------------------------------------


def test_lag_counts_uncommitted_partitions_from_earliest() -> None:
    from aiokafka import TopicPartition

    t0, t1, t2 = (TopicPartition("q", i) for i in range(3))
    ends = {t0: 100, t1: 50, t2: 10}
    assert lag_of(ends, {t0: 0, t1: 20, t2: 0}, {t0: 90, t1: -1}) == 10 + 30 + 10


class FakeKube:
    def __init__(
        self,
        secrets: set[str] = frozenset(),  # type: ignore[assignment]
        refuse: Exception | None = None,
    ) -> None:
        self.applied: list[dict[str, Any]] = []
        self.stored: dict[tuple[str, str], dict[str, Any]] = {}
        self.secrets = secrets
        self.refuse = refuse  # raised by apply and get

    async def apply(self, manifest: Any) -> dict[str, Any]:
        if self.refuse:
            raise self.refuse
        self.applied.append(manifest)
        stored = {**manifest, "status": {"readyReplicas": 1, "updatedReplicas": 1}}
        self.stored[manifest["kind"], manifest["metadata"]["name"]] = stored
        return stored

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        if self.refuse:
            raise self.refuse
        if kind == "Secret":
            return {"kind": kind} if name in self.secrets else None
        return self.stored.get((kind, name))


def _kafka(lag: int, partitions: int = 6, action: str = "unchanged") -> Any:
    async def round_(topic: str, wanted: int, group: str) -> PoolKafkaState:
        assert topic == "mailsluice.queue.bulk-a" and group == "mailsluice.delivery.bulk-a"
        return PoolKafkaState(TopicChange(topic, action, partitions), partitions, lag)

    return round_


async def _reconcile(
    body: dict[str, Any], kube: FakeKube, kafka_round: Any, previous: Any = None
) -> Any:
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
        previous=previous,
    )


async def test_reconcile_applies_children_and_reports() -> None:
    kube = FakeKube()
    out = await _reconcile(POOL_BODY, kube, _kafka(lag=250))
    assert [m["kind"] for m in kube.applied] == ["Deployment", "PodDisruptionBudget"]
    st = out.status
    assert st["replicas"] == 1  # ses-45-day day 7: the warm-up budget keeps one worker busy
    assert (st["lag"], st["partitions"], st["warmupDay"]) == (250, 6, 7)
    ses = warmup.schedule({"preset": "ses-45-day"})
    cap = ses.daily(7) if ses is not None else None
    assert cap is not None and st["todayCap"] == 2 * cap  # each of the two addresses has its own
    assert st["warmup"] == [
        {"address": "192.0.2.10", "warm": False, "day": 7, "cap": cap, "usage": 0},
        {"address": "192.0.2.11", "warm": False, "day": 7, "cap": cap, "usage": 0},
    ]
    assert st["observedGeneration"] == 2
    ready = st["conditions"][0]
    assert (ready["type"], ready["status"]) == ("Ready", "True")
    warm = {**POOL_BODY, "spec": {**POOL_BODY["spec"], "warmup": {"preset": "none"}}}
    out = await _reconcile(warm, FakeKube(), _kafka(lag=250))
    assert out.status["replicas"] == 3 and out.status["todayCap"] is None


async def test_each_address_has_its_own_day_and_a_warm_one_lifts_the_pools_cap() -> None:
    sources = [
        {"address": "192.0.2.10", "startDate": "2026-11-24"},
        {"address": "192.0.2.11", "warm": True},
    ]
    spec = {**POOL_BODY["spec"], "warmup": {"preset": "ses-45-day", "sources": sources}}
    out = await _reconcile({**POOL_BODY, "spec": spec}, FakeKube(), _kafka(lag=250))
    st = out.status
    ses = warmup.schedule({"preset": "ses-45-day"})
    assert ses is not None
    assert st["warmupDay"] == 3  # the coldest address's day (the pool's creation: day 7)
    assert st["todayCap"] is None  # the warm address sends without a cap
    assert st["warmup"] == [
        {"address": "192.0.2.10", "warm": False, "day": 3, "cap": ses.daily(3), "usage": 0},
        {"address": "192.0.2.11", "warm": True},
    ]
    assert st["replicas"] == 3  # no warm-up budget: scaled on lag


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ({"warmup": {"preset": "bogus"}}, "InvalidWarmup"),
        ({"warmup": {"sources": [{"address": "192.0.2.99", "warm": True}]}}, "InvalidWarmup"),
        (
            {"warmup": {"sources": [{"address": "192.0.2.10", "warm": True, "startDate": "x"}]}},
            "InvalidWarmup",
        ),
        ({"minWorkers": 5, "maxWorkers": 2}, "InvalidLimits"),
        ({"maxWorkers": 9}, "InvalidLimits"),
        ({"sourceAddresses": ["192.0.2.10", "mta.example.test"]}, "InvalidSourceAddresses"),
        ({"sourceAddresses": ["2001:db8::1", "2001:DB8:0::1"]}, "InvalidSourceAddresses"),
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


async def test_a_round_that_changes_children_posts_one_normal_event() -> None:
    kube = FakeKube()
    first = await _reconcile(POOL_BODY, kube, _kafka(lag=0))
    assert [(e.type, e.reason, e.message) for e in first.events] == [
        (
            "Normal",
            "Applied",
            "created Deployment mailsluice-delivery-bulk-a; "
            "created PodDisruptionBudget mailsluice-delivery-bulk-a",
        )
    ]
    body = {**POOL_BODY, "status": first.status}
    assert (await _reconcile(body, kube, _kafka(lag=0))).events == []
    renamed = {**body, "spec": {**POOL_BODY["spec"], "ehloName": "mta2.example.com"}}
    changed = await _reconcile(renamed, kube, _kafka(lag=0))
    assert [(e.reason, e.message) for e in changed.events] == [
        ("Applied", "updated Deployment mailsluice-delivery-bulk-a")
    ]


async def test_a_stale_body_does_not_post_the_warning_again() -> None:
    """The timer's body may predate the create handler's status patch: the status the handler
    last wrote (`previous`) decides, so the Warning is posted once."""
    body = {**POOL_BODY, "spec": {**POOL_BODY["spec"], "maxWorkers": 1, "minWorkers": 2}}
    first = await _reconcile(body, FakeKube(), _kafka(lag=0))
    assert [e.type for e in first.events] == ["Warning"]
    stale = await _reconcile(body, FakeKube(), _kafka(lag=0), previous=first.status)
    assert stale.events == []
    assert [e.type for e in (await _reconcile(body, FakeKube(), _kafka(lag=0))).events] == [
        "Warning"
    ]


async def test_kafka_down_and_shrink_are_conditions() -> None:
    async def down(topic: str, wanted: int, group: str) -> PoolKafkaState:
        raise KafkaUnavailable("Kafka did not answer within 1s")

    kube = FakeKube()
    out = await _reconcile(POOL_BODY, kube, down)
    stalled = out.status["conditions"][2]
    assert (stalled["status"], stalled["reason"]) == ("True", "KafkaUnavailable")
    assert len(kube.applied) == 2  # children still follow the spec
    out = await _reconcile(POOL_BODY, FakeKube(), _kafka(0, partitions=24, action="shrink-refused"))
    conds = {c["type"]: c for c in out.status["conditions"]}
    assert conds["Stalled"]["reason"] == "PartitionsShrinkRefused"
    assert conds["Ready"]["status"] == "True"
    assert out.status["partitions"] == 24


def _ledger(
    pool: str, scope: str, window: float, used: int, source: str = ""
) -> tuple[bytes, bytes]:
    usage = WarmupUsage(pool, source, scope, "2026-11-01", window, used)
    return record_key(pool, source, scope), encode_usage(usage)


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
        records = dict(
            [
                _ledger("bulk-a", "*@0", midnight, cap, source="192.0.2.10"),
                _ledger("bulk-a", "*@0", midnight, cap - 10, source="192.0.2.11"),
                _ledger("bulk-a", "*@1", midnight, 10, source="192.0.2.11"),
            ]
        )
        return PoolKafkaState(TopicChange(topic, "unchanged", 6), 6, 5000, records)

    out = await _reconcile(body, FakeKube(), spent)
    assert (out.status["todayUsage"], out.status["todayCap"]) == (2 * cap, 2 * cap)
    assert [a["usage"] for a in out.status["warmup"]] == [cap, cap]
    assert out.status["replicas"] == 0
    assert "warm-up budget" in out.status["lastScaleReason"]


async def test_api_server_answers_are_conditions_and_silence_is_raised() -> None:
    """A refused write stalls the pool (the next round tries again); no answer at all is the
    operator's own failure and leaves reconcile, for the handler to count and retry."""
    refused = KubeError(422, "Deployment is invalid")
    out = await _reconcile(POOL_BODY, FakeKube(refuse=refused), _kafka(lag=0))
    conds = {c["type"]: c for c in out.status["conditions"]}
    assert (conds["Stalled"]["reason"], conds["Ready"]["status"]) == ("ApplyFailed", "False")
    assert conds["Stalled"]["message"] == "Kubernetes API answered 422: Deployment is invalid"
    secret_spec = {"workerTemplate": {"env": [_secret_env("smtp")]}}
    body = {**POOL_BODY, "spec": {**POOL_BODY["spec"], **secret_spec}}
    out = await _reconcile(body, FakeKube(refuse=KubeError(403, "forbidden")), _kafka(lag=0))
    stalled = out.status["conditions"][2]
    assert (stalled["reason"], stalled["message"]) == (
        "SecretUnreadable",
        "cannot read Secret smtp: Kubernetes API answered 403: forbidden",
    )
    silent = RuntimeError("no answer")
    with pytest.raises(RuntimeError, match="no answer"):
        await _reconcile(POOL_BODY, FakeKube(refuse=silent), _kafka(lag=0))


def _secret_env(name: str) -> dict[str, Any]:
    return {"name": "X", "valueFrom": {"secretKeyRef": {"name": name, "key": "k"}}}
