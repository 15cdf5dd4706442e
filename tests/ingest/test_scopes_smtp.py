"""Suppression scopes at ingest, end to end: real SMTP on loopback, the real broker and the real
suppression store. RCPT refuses what the global, tenant and sender-domain scopes hold; the end
of DATA leaves out what the message's list holds; queue records name tenant and list."""

from __future__ import annotations

import asyncio
import smtplib
from pathlib import Path

from support.ingest import (
    events,
    queue_id_of,
    queued,
    running_auth_ingest,
    running_ingest,
    smtp_send,
    uid,
)
from support.tls import trusting_client_context

from mailsluice.contracts.suppressions import GLOBAL, Scope
from mailsluice.ingest.auth import hash_password
from mailsluice.kafka.clients import make_producer
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.suppression.store import SuppressionStore, add_suppression


async def suppress(ks: KafkaSettings, store: SuppressionStore, address: str, scope: Scope) -> None:
    producer = make_producer(ks, max_message_size=1 << 20, client_id="test-suppress")
    await producer.start()
    try:
        await add_suppression(producer, address, reason="test", scope=scope)
    finally:
        await producer.stop()
    await store.wait_for(lambda: store.suppressed(address, [scope]))


async def test_scoped_verdicts_at_rcpt_and_the_list_at_data(
    kafka_settings: KafkaSettings, dns_nameserver: str, dns_server
) -> None:
    domain = f"scopes-{uid()}.test"
    dns_server.set_mx(domain, [(10, f"mx.{domain}")])
    g, t, d, lst, keep = (f"{name}@{domain}" for name in ("g", "t", "d", "l", "keep"))
    async with running_ingest(kafka_settings, dns_nameserver, trusted_tenant="acme") as ingest:
        store = ingest._store
        await suppress(kafka_settings, store, g, GLOBAL)
        await suppress(kafka_settings, store, t, Scope.parse("tenant:acme"))
        await suppress(kafka_settings, store, d, Scope.parse("domain:shop.example"))
        await suppress(kafka_settings, store, lst, Scope.parse("list:acme/news"))
        await suppress(kafka_settings, store, keep, Scope.parse("tenant:beta"))
        message = b"From: me@shop.example\r\nList-Id: Acme news <news>\r\nSubject: x\r\n\r\nhi\r\n"
        sent = await asyncio.to_thread(
            smtp_send, ingest.port, "me@shop.example", [g, t, d, lst, keep], message
        )
        assert sorted(sent.refused) == sorted([g, t, d])
        assert {reply for reply in sent.refused.values()} == {
            (550, b"5.7.1 Recipient address is suppressed")
        }
        queue_id = queue_id_of(sent.data_reply)
        (record,) = await queued(kafka_settings, queue_id, expect=1)
        env = record.envelope
        assert (env.recipients, env.tenant, env.list_id) == ((keep,), "acme", "news")
        found = await events(
            kafka_settings, lambda e: e.queue_id == queue_id and e.type == "suppressed", expect=1
        )
        assert [(e.recipient, e.reason) for e in found] == [(lst, "list:acme/news")]

        # Another sender domain, no list: the domain and list scopes do not apply.
        plain = b"From: me@other.example\r\nSubject: y\r\n\r\nhi\r\n"
        sent = await asyncio.to_thread(smtp_send, ingest.port, "me@other.example", [d, lst], plain)
        assert sent.refused == {}
        (record,) = await queued(kafka_settings, queue_id_of(sent.data_reply), expect=1)
        assert (record.envelope.recipients, record.envelope.list_id) == ((d, lst), "")


def send_as(port: int, user: str, rcpt: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.test")
        client.starttls(context=trusting_client_context())
        client.ehlo("client.test")
        client.login(user, "secret")
        assert client.mail("s@client.test")[0] == 250
        assert client.rcpt(rcpt)[0] == 250
        return client.data(b"Subject: x\r\nList-Id: <digest.example>\r\n\r\nbody\r\n")


async def test_an_auth_users_tenant_is_on_its_queue_records(
    kafka_settings: KafkaSettings, dns_nameserver: str, dns_server, tmp_path: Path
) -> None:
    domain = f"tenant-{uid()}.test"
    dns_server.set_mx(domain, [(10, f"mx.{domain}")])
    secret = hash_password("secret")
    users = (
        f"users:\n  app:\n    password: '{secret}'\n    tenant: acme\n"
        f"  plain:\n    password: '{secret}'\n"
    )
    async with running_auth_ingest(kafka_settings, dns_nameserver, tmp_path, users) as ingest:
        for user, tenant in [("app", "acme"), ("plain", "plain")]:
            reply = await asyncio.to_thread(send_as, ingest.port, user, f"r@{domain}")
            (record,) = await queued(kafka_settings, queue_id_of(reply), expect=1)
            env = record.envelope
            assert (env.user, env.tenant, env.list_id) == (user, tenant, "digest.example")
