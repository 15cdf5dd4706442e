"""AUTH over STARTTLS, relay control for strangers, pool selection, operator endpoints and the
command line."""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import AsyncIterator

import aiohttp
import pytest
from support.ingest import RawClient, queue_id_of, queued, running_auth_ingest, uid
from support.tls import trusting_client_context

from mailsluice.ingest.auth import hash_password
from mailsluice.ingest.service import IngestService
from mailsluice.kafka.settings import KafkaSettings


@pytest.fixture(scope="module")
async def ingest(kafka_settings, dns_nameserver, tmp_path_factory) -> AsyncIterator[IngestService]:
    """Loopback is NOT trusted here: only authenticated users may relay."""
    directory = tmp_path_factory.mktemp("auth")
    users = (
        "users:\n"
        f"  app:\n    password: '{hash_password('app-secret')}'\n"
        "    pools: [default, bulk]\n    default_pool: default\n"
        f"  other:\n    password: '{hash_password('other-secret', scheme='pbkdf2_sha256')}'\n"
        "    pools: [default]\n"
    )
    async with running_auth_ingest(
        kafka_settings,
        dns_nameserver,
        directory,
        users,
        serve_http=True,
    ) as service:
        yield service


def tls_client(port: int) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", port, timeout=30)
    client.ehlo("client.test")
    client.starttls(context=trusting_client_context())
    client.ehlo("client.test")
    return client


async def test_strangers_cannot_relay(ingest: IngestService, domain: str) -> None:
    client = await RawClient.connect(ingest.port)
    try:
        ehlo = (await client.cmd("EHLO client.test")).split("\n")
        assert "250-STARTTLS" in ehlo
        assert not any("AUTH" in line for line in ehlo)  # AUTH only after TLS
        assert await client.cmd("MAIL FROM:<s@client.test>") == (
            "530 5.7.0 Authentication required"
        )
        assert await client.cmd(f"RCPT TO:<x@{domain}>") == "503 5.5.1 Error: need MAIL command"
    finally:
        await client.close()


def send_authenticated(
    port: int, user: str, password: str, mechanism: str, *, rcpt: str, message: bytes
) -> tuple[int, bytes]:
    with tls_client(port) as client:
        assert "auth" in client.esmtp_features
        assert set(client.esmtp_features["auth"].split()) == {"LOGIN", "PLAIN"}
        client.user, client.password = user, password
        method = client.auth_plain if mechanism == "PLAIN" else client.auth_login
        code, _ = client.auth(mechanism, method)
        assert code == 235
        assert client.mail("s@client.test")[0] == 250
        assert client.rcpt(rcpt)[0] == 250
        return client.data(message)


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
async def test_authenticated_user_relays_over_tls(
    ingest: IngestService, kafka_settings: KafkaSettings, domain: str, mechanism: str
) -> None:
    rcpt = f"r-{uid()}@{domain}"
    reply = await asyncio.to_thread(
        lambda: send_authenticated(
            ingest.port,
            "app",
            "app-secret",
            mechanism,
            rcpt=rcpt,
            message=b"Subject: auth\r\nX-Mailsluice-Pool: bulk\r\n\r\nbody\r\n",
        )
    )
    queue_id = queue_id_of(reply)
    records = await queued(kafka_settings, queue_id, pool="bulk", expect=1)
    assert len(records) == 1
    record = records[0]
    assert record.topic == "mailsluice.queue.bulk"
    assert (record.envelope.pool, record.envelope.user) == ("bulk", "app")
    assert b"X-Mailsluice-Pool" not in record.value
    assert b"with ESMTPSA id " + queue_id.encode() in record.value


async def test_wrong_password_is_refused(ingest: IngestService) -> None:
    def attempt() -> int:
        with tls_client(ingest.port) as client:
            try:
                client.login("app", "wrong")
            except smtplib.SMTPAuthenticationError as exc:
                return exc.smtp_code
            return 235

    assert await asyncio.to_thread(attempt) == 535


@pytest.mark.parametrize("pool", ["bulk", "nonexistent"])
async def test_pool_the_user_may_not_use_is_refused(
    ingest: IngestService, domain: str, pool: str
) -> None:
    def attempt() -> tuple[int, bytes]:
        with tls_client(ingest.port) as client:
            client.login("other", "other-secret")
            client.mail("s@client.test")
            client.rcpt(f"r@{domain}")
            return client.data(f"Subject: x\r\nX-Mailsluice-Pool: {pool}\r\n\r\nbody\r\n".encode())

    code, text = await asyncio.to_thread(attempt)
    assert (code, text) == (550, b"5.7.1 Pool not allowed for this sender")


async def test_operator_endpoints(ingest: IngestService) -> None:
    assert ingest._http is not None
    host, port = ingest._http.addresses[0][:2]
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://{host}:{port}/readyz") as response:
            assert response.status == 200
        async with session.get(f"http://{host}:{port}/healthz") as response:
            assert response.status == 200
        async with session.get(f"http://{host}:{port}/metrics") as response:
            text = await response.text()
    for name in (
        "mailsluice_ingest_connections_total",
        "mailsluice_ingest_connections_open",
        "mailsluice_ingest_transactions_total",
        "mailsluice_ingest_recipients_total",
        "mailsluice_ingest_bytes_total",
        "mailsluice_ingest_kafka_publish_seconds",
        "mailsluice_ingest_transaction_seconds",
    ):
        assert name in text
    assert 'mailsluice_ingest_transactions_total{result="queued"}' in text


async def test_plaintext_injected_after_starttls_is_refused(ingest: IngestService) -> None:
    client = await RawClient.connect(ingest.port)
    try:
        await client.cmd("EHLO client.test")
        await client.send(b"STARTTLS\r\nMAIL FROM:<injected@client.test>\r\n")
        assert await client.reply() == "554 5.5.0 SMTP protocol synchronization error, closing"
        assert await client.closed()
    finally:
        await client.close()
