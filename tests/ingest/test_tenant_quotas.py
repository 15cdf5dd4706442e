"""Tenant quotas at SMTP without sockets (ingest/quotas.py), on a simulated clock: the 452 4.3.1
reply at RCPT and the charge once a plan's records are acknowledged."""

from __future__ import annotations

from mailsluice.contracts.envelope import Envelope
from mailsluice.ingest import replies
from mailsluice.ingest.plan import Outcome, Plan, QueueRecord
from mailsluice.ingest.quotas import TenantQuotas
from mailsluice.tenancy.model import parse_tenants
from mailsluice.tenancy.quota import DAY_S, QuotaBook
from mailsluice.tenancy.registry import Registry

NOW = 20_000 * DAY_S + 1800.0  # 00:30 UTC
TENANTS = parse_tenants(
    {
        "acme": {"pools": ["default"], "domains": ["acme.test"], "quotas": {"per_hour": 3}},
        "free": {"pools": ["default"], "domains": ["free.test"]},
    }
)


def quotas() -> TenantQuotas:
    return TenantQuotas(Registry(tenants=TENANTS), QuotaBook(), clock=lambda: NOW)


def plan_of(tenant: str, *groups: tuple[str, ...]) -> Plan:
    records = tuple(
        QueueRecord(
            "t",
            b"k",
            b"v",
            Envelope(
                queue_id="Q",
                pool="default",
                sender="me@acme.test",
                recipients=group,
                routing_key="k",
                received_at=NOW,
                tenant=tenant,
            ),
        )
        for group in groups
    )
    return Plan(Outcome("250 2.0.0 Ok"), records)


def test_over_the_hourly_quota_is_452_with_the_wait() -> None:
    q = quotas()
    assert q.judge("acme", 0) is None and q.judge("acme", 2) is None
    reply = q.judge("acme", 3)  # a fourth recipient in one transaction
    assert reply == replies.S452_OVER_QUOTA.format(
        tenant="acme", window="hour", limit=3, retry=1800
    )
    assert reply.startswith("452 4.3.1 ") and "try again in 1800 s" in reply


def test_accepted_recipients_are_charged_once_acknowledged() -> None:
    q = quotas()
    assert q.charge(plan_of("acme", ("a@x.example", "b@x.example"))) == 2
    assert q.judge("acme", 0) is None
    assert q.judge("acme", 1) is not None  # 2 charged + 1 in this transaction + 1
    assert q.charge(plan_of("acme", ("c@x.example",))) == 1
    reply = q.judge("acme", 0)
    assert reply is not None and "per-hour quota of 3" in reply


def test_no_quota_unknown_tenant_and_nothing_written_charge_nothing() -> None:
    q = quotas()
    assert q.judge("free", 10**6) is None
    assert q.judge("legacy-user", 10**6) is None and q.judge("", 10**6) is None
    assert q.charge(plan_of("legacy-user", ("a@x.example",))) == 0
    assert q.charge(Plan(Outcome("550 5.7.1 no"))) == 0
    assert q.charge(plan_of("free", ("a@x.example",), ("b@y.example",))) == 2
