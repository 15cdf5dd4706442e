"""AUTH abuse and sender ownership over real SMTP (STARTTLS + AUTH, loopback not trusted): the
delay before a failed AUTH's 535, lockouts per client IP and per username (454 4.7.0, the right
password too), a PLAIN authzid other than the authcid, and users sending only as their own
domains, in MAIL FROM (550 5.7.1 at MAIL) and in the header From (550 5.7.1 after DATA).

Each test that counts failures connects from a loopback address of its own (127.0.0.x), so the
per-IP counts of one test never touch another's."""

from __future__ import annotations

import asyncio
import base64
import smtplib
import time
from collections.abc import AsyncIterator

import pytest
from support.eventually import eventually
from support.ingest import queue_id_of, queued, running_auth_ingest, running_ingest, uid
from support.tls import trusting_client_context

from mailsluice.ingest.auth import hash_password
from mailsluice.ingest.service import IngestService
from mailsluice.kafka.settings import KafkaSettings

DELAY_S, MAX_DELAY_S = 0.3, 0.6
MAX_FAILURES_IP, MAX_FAILURES_USER = 4, 6
LOCKOUT_S = 3.0


@pytest.fixture(scope="module")
async def ingest(kafka_settings, dns_nameserver, tmp_path_factory) -> AsyncIterator[IngestService]:
    directory = tmp_path_factory.mktemp("auth-abuse")
    secret = hash_password("secret", scheme="pbkdf2_sha256")
    users = (
        "users:\n"
        f"  tenant-a:\n    password: '{secret}'\n"
        "    domains: [tenant-a.test, '*.tenant-a.test']\n"
        f"  legacy:\n    password: '{secret}'\n"
        f"  victim:\n    password: '{secret}'\n"
        f"  locked-ip:\n    password: '{secret}'\n"
    )
    async with running_auth_ingest(
        kafka_settings,
        dns_nameserver,
        directory,
        users,
        auth_fail_delay_s=DELAY_S,
        auth_fail_delay_max_s=MAX_DELAY_S,
        auth_max_failures_ip=MAX_FAILURES_IP,
        auth_max_failures_user=MAX_FAILURES_USER,
        auth_failure_window_s=60.0,
        auth_lockout_s=LOCKOUT_S,
    ) as service:
        yield service


def tls_client(port: int, source_ip: str = "127.0.0.1") -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=(source_ip, 0))
    client.ehlo("client.test")
    client.starttls(context=trusting_client_context())
    client.ehlo("client.test")
    return client


def auth_plain(port: int, source_ip: str, message: bytes) -> tuple[int, str, float]:
    """One connection, one `AUTH PLAIN <initial response>`: the reply and how long it took."""
    with tls_client(port, source_ip) as client:
        started = time.perf_counter()
        code, text = client.docmd("AUTH", "PLAIN " + base64.b64encode(message).decode())
        return code, text.decode(), time.perf_counter() - started


def login(port: int, source_ip: str, user: str, password: str) -> tuple[int, str, float]:
    return auth_plain(port, source_ip, f"\0{user}\0{password}".encode())


async def test_failed_auth_waits_longer_each_time(ingest: IngestService) -> None:
    user = f"nobody-{uid()}"
    took = []
    for _ in range(3):
        code, text, seconds = await asyncio.to_thread(login, ingest.port, "127.0.0.10", user, "x")
        assert (code, text) == (535, "5.7.8 Authentication credentials invalid")
        took.append(seconds)
    assert took[0] >= DELAY_S
    assert took[1] >= 2 * DELAY_S
    assert MAX_DELAY_S <= took[2] < MAX_DELAY_S + 2.0  # capped


async def test_failures_lock_the_client_ip_out_right_password_too(ingest: IngestService) -> None:
    ip = "127.0.0.11"
    for _ in range(MAX_FAILURES_IP):
        code, *_ = await asyncio.to_thread(login, ingest.port, ip, "locked-ip", "wrong")
        assert code == 535
    code, text, _ = await asyncio.to_thread(login, ingest.port, ip, "locked-ip", "secret")
    assert (code, text) == (454, "4.7.0 Temporary authentication failure")
    # Another IP is not locked out, and the username has not reached its own limit.
    code, *_ = await asyncio.to_thread(login, ingest.port, "127.0.0.12", "locked-ip", "secret")
    assert code == 235

    async def unlocked() -> bool:
        reply = await asyncio.to_thread(login, ingest.port, ip, "locked-ip", "secret")
        return reply[0] == 235

    await eventually(unlocked, within=LOCKOUT_S + 10, what="the IP unlocked after the lockout")


async def test_failures_from_many_ips_lock_the_username_out(ingest: IngestService) -> None:
    for n in range(MAX_FAILURES_USER):
        ip = f"127.0.1.{n + 1}"
        code, *_ = await asyncio.to_thread(login, ingest.port, ip, "victim", "wrong")
        assert code == 535
    code, text, _ = await asyncio.to_thread(login, ingest.port, "127.0.1.100", "victim", "secret")
    assert (code, text) == (454, "4.7.0 Temporary authentication failure")
    code, *_ = await asyncio.to_thread(login, ingest.port, "127.0.1.100", "legacy", "secret")
    assert code == 235  # the same IP, another user: only the username is locked


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (b"legacy\0tenant-a\0secret", 535),  # authorise as another user: proxy authorisation
        (b"tenant-a\0tenant-a\0secret", 235),
        (b"\0tenant-a\0secret", 235),
    ],
)
async def test_plain_authzid_other_than_the_user_is_refused(
    ingest: IngestService, message: bytes, expected: int
) -> None:
    code, text, _ = await asyncio.to_thread(auth_plain, ingest.port, "127.0.0.13", message)
    assert code == expected
    if expected == 535:
        assert text == "5.7.8 Authentication failed: authorization identity not supported"


def mail_from(port: int, user: str, sender: str) -> tuple[int, str]:
    with tls_client(port) as client:
        client.login(user, "secret")
        code, text = client.mail(sender)
        return code, text.decode()


@pytest.mark.parametrize(
    ("user", "sender", "expected"),
    [
        ("tenant-a", "x@tenant-b.test", 550),
        ("tenant-a", "x@tenant-a.test.evil.test", 550),
        ("tenant-a", "x@tenant-a.test", 250),
        ("tenant-a", "x@Mail.Tenant-A.test", 250),
        ("tenant-a", "", 250),  # the null reverse-path: bounces and auto-replies
        ("legacy", "x@tenant-b.test", 250),  # no domains configured: unrestricted
    ],
)
async def test_mail_from_must_be_an_owned_domain(
    ingest: IngestService, user: str, sender: str, expected: int
) -> None:
    code, text = await asyncio.to_thread(mail_from, ingest.port, user, sender)
    assert code == expected
    if expected == 550:
        assert text == "5.7.1 Sender address rejected: not owned by user tenant-a"


def send(port: int, user: str, sender: str, rcpt: str, header_from: str) -> tuple[int, str]:
    with tls_client(port) as client:
        client.login(user, "secret")
        assert client.mail(sender)[0] == 250
        assert client.rcpt(rcpt)[0] == 250
        code, text = client.data(f"From: {header_from}\r\nSubject: x\r\n\r\nbody\r\n".encode())
        return code, text.decode()


@pytest.mark.parametrize(
    "header_from",
    [
        "Boss <ceo@tenant-b.test>",
        "a@tenant-a.test, ceo@tenant-b.test",
        '"a@tenant-a.test" <ceo@tenant-b.test>',
        "undisclosed:;",
    ],
)
async def test_header_from_of_another_domain_is_refused_after_data(
    ingest: IngestService, domain: str, header_from: str
) -> None:
    reply = await asyncio.to_thread(
        send, ingest.port, "tenant-a", "x@tenant-a.test", f"r@{domain}", header_from
    )
    assert reply == (550, "5.7.1 From header address rejected: not owned by user tenant-a")


async def test_owned_header_from_is_queued(
    ingest: IngestService, kafka_settings: KafkaSettings, domain: str
) -> None:
    reply = await asyncio.to_thread(
        send, ingest.port, "tenant-a", "x@tenant-a.test", f"r@{domain}", "A <a@news.tenant-a.test>"
    )
    assert reply[0] == 250
    records = await queued(kafka_settings, queue_id_of((reply[0], reply[1].encode())), expect=1)
    assert records[0].envelope.user == "tenant-a"


def raw_auth(port: int, source_ip: str, lines: list[str]) -> list[str]:
    """Send each line, collect each reply (AUTH dialogues with 334 challenges)."""
    with tls_client(port, source_ip) as client:
        answers = []
        for line in lines:
            client.putcmd(line)
            code, text = client.getreply()
            answers.append(f"{code} {text.decode()}")
        return answers


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    ("lines", "last"),
    [
        (["AUTH PLAIN", b64("\0nobody\0x")], "535 5.7.8 Authentication credentials invalid"),
        (["AUTH LOGIN", b64("nobody"), b64("x")], "535 5.7.8 Authentication credentials invalid"),
        ([f"AUTH LOGIN {b64('nobody')}", b64("x")], "535 5.7.8 Authentication credentials invalid"),
        (["AUTH LOGIN", "*"], "501 5.7.0 Auth aborted"),
        (["AUTH PLAIN", "not base64!"], "501 5.5.2 Can't decode base64"),
        ([f"AUTH PLAIN {b64('nobody')}"], "501 5.5.2 Can't split auth value"),
    ],
)
async def test_every_auth_dialogue_answers(
    ingest: IngestService, lines: list[str], last: str
) -> None:
    answers = await asyncio.to_thread(raw_auth, ingest.port, "127.0.0.14", lines)
    assert all(a.startswith("334 ") for a in answers[:-1]), answers
    assert answers[-1] == last


async def test_trusted_network_sender_domains(
    kafka_settings: KafkaSettings, dns_nameserver: str
) -> None:
    """Trusted networks are unrestricted unless MAILSLUICE_INGEST_TRUSTED_SENDER_DOMAINS says."""
    async with running_ingest(
        kafka_settings,
        dns_nameserver,
        is_suppressed=lambda a, _scopes: False,
        trusted_sender_domains="corp.test",
    ) as service:

        def attempt(sender: str) -> tuple[int, bytes]:
            with smtplib.SMTP("127.0.0.1", service.port, timeout=30) as client:
                client.ehlo("client.test")
                return client.mail(sender)

        assert await asyncio.to_thread(attempt, "a@other.test") == (
            550,
            b"5.7.1 Sender address rejected: not owned by user trusted:127.0.0.0/8",
        )
        assert (await asyncio.to_thread(attempt, "a@corp.test"))[0] == 250
