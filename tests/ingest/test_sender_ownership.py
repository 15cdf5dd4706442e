"""Sender ownership without sockets: the users file's `domains`, the MAIL FROM verdict
(verdicts.judge_sender) and the header From check of plan_message."""

from __future__ import annotations

import logging

import pytest

from mailsluice.ingest import replies
from mailsluice.ingest.auth import CredentialsError, User, parse_users, warn_unrestricted
from mailsluice.ingest.plan import Client, PoolPolicy, Transaction, plan_message
from mailsluice.ingest.settings import IngestSettings
from mailsluice.ingest.verdicts import judge_sender
from mailsluice.policy.owners import UNRESTRICTED, OwnedDomains

HASH = "pbkdf2_sha256$1$c2FsdA==$aGFzaA=="
OWNED = OwnedDomains.parse(["tenant-a.test", "*.tenant-a.test"])
USER = User("tenant-a", HASH, ("default",), "default", OWNED)
POOLS = PoolPolicy("X-Mailsluice-Pool", "default", frozenset({"default"}), frozenset({"default"}))


def test_users_file_domains() -> None:
    users = parse_users(
        {
            "users": {
                "a": {"password": HASH, "domains": ["Tenant-A.test", "*.tenant-a.test"]},
                "b": {"password": HASH},
            }
        },
        "default",
    )
    assert users["a"].domains == OWNED
    assert users["b"].domains is UNRESTRICTED


@pytest.mark.parametrize("domains", ["tenant-a.test", ["not a domain"], [1], ["*"]])
def test_bad_domains_are_refused_when_the_file_is_read(domains: object) -> None:
    with pytest.raises(CredentialsError, match="user 'a'"):
        parse_users({"a": {"password": HASH, "domains": domains}}, "default")


def test_users_without_domains_are_named_in_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    users = parse_users({"a": {"password": HASH}, "b": {"password": HASH, "domains": []}}, "x")
    with caplog.at_level(logging.WARNING):
        warn_unrestricted(users)
    assert "may send as any sender domain: a" in caplog.text


@pytest.mark.parametrize(
    ("sender", "accepted"),
    [
        ("x@tenant-a.test", True),
        ("x@eu.tenant-a.test", True),
        ("", True),  # the null reverse-path
        ("x@tenant-b.test", False),
        ("x@tenant-a.test.evil.test", False),
    ],
)
def test_judge_sender(sender: str, accepted: bool) -> None:
    verdict = judge_sender(sender, OWNED, "tenant-a")
    assert verdict.accepted is accepted
    if not accepted:
        assert verdict.reply == "550 5.7.1 Sender address rejected: not owned by user tenant-a"
        assert verdict.reason == "sender_not_owned"
    assert judge_sender(sender, UNRESTRICTED, "legacy").accepted


def plan_for(client: Client, header_from: str) -> tuple[str, int]:
    txn = Transaction("01JDQ8Z5K3M4N5P6Q7R8S9T0VW", 0.0, 0.0, {"r@x.example": "x.example"})
    raw = f"From: {header_from}\nSubject: hi\n\nbody\n".encode()  # bare LFs: read as relayed
    plan = plan_message(txn, raw, client, hostname="mx.test", pools=POOLS, now=1.0)
    return plan.outcome.reply, len(plan.records)


def test_header_from_outside_the_users_domains_is_refused() -> None:
    client = Client("c.test", "192.0.2.7", "ESMTPSA", USER, domains=OWNED)
    assert plan_for(client, "ceo@tenant-b.test") == (
        replies.S550_FROM_NOT_OWNED.format(user="tenant-a"),
        0,
    )
    reply, records = plan_for(client, "News <n@news.tenant-a.test>")
    assert reply.startswith("250 ") and records == 1


def test_trusted_network_with_configured_domains() -> None:
    settings = IngestSettings(trusted_sender_domains="corp.test, *.corp.test")
    client = Client(
        "c.test", "10.0.0.1", "ESMTP", None, "10.0.0.0/8", settings.trusted_owned_domains()
    )
    assert plan_for(client, "a@tenant-b.test")[0] == (
        "550 5.7.1 From header address rejected: not owned by user trusted:10.0.0.0/8"
    )
    assert plan_for(client, "a@hr.corp.test")[1] == 1
    assert IngestSettings().trusted_owned_domains() is UNRESTRICTED


def test_bad_trusted_sender_domains_fail_validation() -> None:
    with pytest.raises(ValueError, match="not a domain"):
        IngestSettings(trusted_sender_domains="corp.test, *")
