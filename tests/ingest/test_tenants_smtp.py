"""Tenants over SMTP through the real ingest and Kafka: a tenant SMTP user's mail is queued for
its tenant with the campaign and tags of its headers (which leave the message), it cannot send
as another tenant's domain, and its quota holds (452 4.3.1 past it, 250 under it)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from support.eventually import eventually
from support.ingest import events, ingest_settings, queue_id_of, queued, smtp_send, uid
from support.tls import self_signed

from mailsluice.contracts.events import EventType
from mailsluice.ingest.auth import hash_password
from mailsluice.ingest.service import IngestService
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.resolver import DnsSettings
from mailsluice.tenancy.model import Quotas
from mailsluice.tenancy.settings import TenancySettings

RUN = uid()
ACME, GLOBEX, SMALL, SHARED = f"acme-{RUN}", f"globex-{RUN}", f"small-{RUN}", f"shared-{RUN}"
PASSWORD = "tenant-secret"


def tenants_yaml() -> str:
    digest = hash_password(PASSWORD, scheme="pbkdf2_sha256")
    return f"""tenants:
  {ACME}:
    pools: [default]
    domains: [{ACME}.test]
    smtp: {{{ACME}-app: {{password: "{digest}"}}}}
  {GLOBEX}:
    pools: [default]
    domains: [{GLOBEX}.test]
    smtp: {{{GLOBEX}-app: {{password: "{digest}"}}}}
  {SMALL}:
    pools: [default]
    domains: [{SMALL}.test]
    smtp: {{{SMALL}-app: {{password: "{digest}"}}}}
    quotas: {{per_hour: 2, per_day: 2}}
  {SHARED}:
    pools: [default]
    domains: [{SHARED}.test]
    smtp: {{{SHARED}-app: {{password: "{digest}"}}}}
    quotas: {{per_hour: 1, per_day: 1}}
"""


@contextlib.asynccontextmanager
async def tenant_ingest(
    kafka_settings: KafkaSettings, dns_nameserver: str, directory: Path
) -> AsyncIterator[IngestService]:
    """Loopback is not trusted: only the tenants' SMTP users may relay."""
    cert, key = self_signed(directory, "ingest.test")
    tenants = directory / "tenants.yaml"
    tenants.write_text(tenants_yaml())
    service = IngestService(
        ingest_settings(trusted_networks="", tls_cert_file=str(cert), tls_key_file=str(key)),
        kafka_settings,
        DnsSettings(nameservers=dns_nameserver, timeout_s=1.0),
        is_suppressed=lambda _address, _scopes: False,
        serve_http=False,
        tenancy=TenancySettings(file=str(tenants)),
    )
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


@pytest.fixture(scope="module")
async def ingest(
    kafka_settings: KafkaSettings, dns_nameserver: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[IngestService]:
    directory = tmp_path_factory.mktemp("tenants")
    async with tenant_ingest(kafka_settings, dns_nameserver, directory) as service:
        yield service


def send(ingest: IngestService, tenant: str, sender: str, rcpts: list[str], message: bytes):
    return asyncio.to_thread(
        smtp_send,
        ingest.port,
        sender,
        rcpts,
        message,
        login=(f"{tenant}-app", PASSWORD),
        starttls=True,
    )


async def test_a_tenant_users_mail_is_queued_for_its_tenant_with_campaign_and_tags(
    ingest: IngestService, kafka_settings: KafkaSettings, domain: str
) -> None:
    message = (
        f"From: News <news@{ACME}.test>\r\n"
        "X-Mailsluice-Campaign: spring-2026\r\n"
        "X-Mailsluice-Tags: news, vip\r\n"
        "Subject: spring\r\n\r\nhello\r\n"
    ).encode()
    result = await send(ingest, ACME, f"news@{ACME}.test", [f"ann@{domain}"], message)
    queue_id = queue_id_of(result.data_reply)
    (record,) = await queued(kafka_settings, queue_id, expect=1)
    env = record.envelope
    assert (env.tenant, env.campaign, env.tags, env.pool, env.user) == (
        ACME,
        "spring-2026",
        ("news", "vip"),
        "default",
        f"{ACME}-app",
    )
    header = record.value.split(b"\r\n\r\n", 1)[0].lower()
    assert b"x-mailsluice-campaign" not in header and b"x-mailsluice-tags" not in header
    assert b"subject: spring" in header
    (reception,) = await events(
        kafka_settings,
        lambda e: e.queue_id == queue_id and e.type is EventType.RECEPTION,
        expect=1,
    )
    assert (reception.tenant, reception.campaign, reception.tags) == (
        ACME,
        "spring-2026",
        ("news", "vip"),
    )


async def test_a_bad_campaign_is_refused(ingest: IngestService, domain: str) -> None:
    message = (
        f"From: news@{ACME}.test\r\nX-Mailsluice-Campaign: not one\r\nSubject: x\r\n\r\nx\r\n"
    ).encode()
    result = await send(ingest, ACME, f"news@{ACME}.test", [f"ann@{domain}"], message)
    assert result.data_reply is not None
    code, text = result.data_reply
    assert code == 550 and text.startswith(b"5.6.0 X-Mailsluice-Campaign or X-Mailsluice-Tags")


async def test_a_tenant_cannot_send_as_another_tenants_domain(
    ingest: IngestService, domain: str
) -> None:
    message = f"From: ceo@{GLOBEX}.test\r\nSubject: x\r\n\r\nx\r\n".encode()
    envelope = await send(ingest, ACME, f"ceo@{GLOBEX}.test", [f"ann@{domain}"], message)
    assert envelope.data_reply == (
        550,
        f"5.7.1 Sender address rejected: not owned by user {ACME}-app".encode(),
    )
    header = await send(ingest, ACME, f"news@{ACME}.test", [f"ann@{domain}"], message)
    assert header.data_reply == (
        550,
        f"5.7.1 From header address rejected: not owned by user {ACME}-app".encode(),
    )


async def test_the_quota_holds_over_smtp(
    ingest: IngestService, kafka_settings: KafkaSettings, domain: str
) -> None:
    message = f"From: news@{SMALL}.test\r\nSubject: x\r\n\r\nx\r\n".encode()
    sender = f"news@{SMALL}.test"
    first = await send(
        ingest, SMALL, sender, [f"a@{domain}", f"b@{domain}", f"c@{domain}"], message
    )
    assert first.data_reply is not None and first.data_reply[0] == 250  # under quota: 250
    (code, text) = first.refused[f"c@{domain}"]  # the third of a quota of two
    assert code == 452 and text.startswith(f"4.3.1 Tenant {SMALL} is over its per-".encode())
    assert b"quota of 2 recipients, try again in " in text
    (record,) = await queued(kafka_settings, queue_id_of(first.data_reply), expect=1)
    assert record.envelope.recipients == (f"a@{domain}", f"b@{domain}")

    later = await send(ingest, SMALL, sender, [f"d@{domain}"], message)  # charged: none left
    assert later.data_reply is None and later.refused[f"d@{domain}"][0] == 452
    mine = f"From: news@{ACME}.test\r\nSubject: x\r\n\r\nx\r\n".encode()
    other = await send(ingest, ACME, f"news@{ACME}.test", [f"d@{domain}"], mine)
    assert other.data_reply is not None and other.data_reply[0] == 250  # its own quota


async def test_the_quota_holds_across_ingest_replicas(
    ingest: IngestService,
    kafka_settings: KafkaSettings,
    dns_nameserver: str,
    domain: str,
    tmp_path: Path,
) -> None:
    message = f"From: news@{SHARED}.test\r\nSubject: x\r\n\r\nx\r\n".encode()
    sender = f"news@{SHARED}.test"
    async with tenant_ingest(kafka_settings, dns_nameserver, tmp_path) as second:
        first = await send(ingest, SHARED, sender, [f"a@{domain}"], message)
        assert first.data_reply is not None and first.data_reply[0] == 250
        await eventually(
            lambda: second.quota_book.admit(SHARED, Quotas(per_day=1), 1, time.time()),
            within=20,
            what="the second replica learns the first one's count",
        )
        later = await send(second, SHARED, sender, [f"b@{domain}"], message)
        assert later.data_reply is None and later.refused[f"b@{domain}"][0] == 452
