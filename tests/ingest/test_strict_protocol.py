"""Protocol strictness over real SMTP (raw sockets: the bytes and the segments matter): commands
sent before the previous reply without PIPELINING, AUTH and its SASL responses as commands to
wait on, STARTTLS inside TLS, unknown commands against our error limit and never echoed with
their control bytes, EHLO names with control characters, enhanced codes on aiosmtpd's replies."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import pytest
from support.ingest import RawClient, running_auth_ingest, running_ingest
from support.metrics import sample
from support.tls import trusting_client_context

from mailsluice.ingest import replies
from mailsluice.ingest.auth import hash_password
from mailsluice.ingest.service import IngestService

MAIL = "MAIL FROM:<s@client.test>"
PLAIN = "AUTH PLAIN " + base64.b64encode(b"\0app\0app-secret").decode()


@pytest.fixture(scope="module")
async def ingest(kafka_settings, dns_nameserver) -> AsyncIterator[IngestService]:
    """Loopback trusted, no TLS, a low error limit (above aiosmtpd's own five)."""
    async with running_ingest(
        kafka_settings,
        dns_nameserver,
        is_suppressed=lambda a, _scopes: False,
        max_errors_per_connection=8,
    ) as service:
        yield service


@pytest.fixture(scope="module")
async def submission(
    kafka_settings, dns_nameserver, tmp_path_factory
) -> AsyncIterator[IngestService]:
    """STARTTLS and AUTH; loopback is not trusted."""
    directory = tmp_path_factory.mktemp("strict")
    users = f"users:\n  app:\n    password: '{hash_password('app-secret')}'\n"
    async with running_auth_ingest(
        kafka_settings,
        dns_nameserver,
        directory,
        users,
    ) as service:
        yield service


async def tls_session(port: int) -> RawClient:
    client = await RawClient.connect(port)
    assert (await client.cmd("EHLO client.test")).startswith("250-")
    assert (await client.cmd("STARTTLS")).startswith("220 ")
    await client.writer.start_tls(trusting_client_context())
    assert "250-AUTH LOGIN PLAIN" in (await client.cmd("EHLO client.test")).split("\n")
    return client


async def refused_and_closed(client: RawClient) -> None:
    assert await client.reply() == replies.S554_PIPELINING
    assert await client.closed()


# --- pipelining without PIPELINING -------------------------------------------------------------


@pytest.mark.parametrize(
    "segment",
    [
        f"{MAIL}\r\nRCPT TO:<r@x.test>\r\n",
        "NOOP\r\nMAIL FROM:<s@client.test>\r\n",
        "RSET\r\nRCPT TO:<r@x.test>\r\n",
    ],
)
async def test_after_helo_a_command_sent_before_the_reply_is_refused(
    ingest: IngestService, segment: str
) -> None:
    before = sample("mailsluice_ingest_protocol_violations_total", kind="pipelining")
    client = await RawClient.connect(ingest.port)
    try:
        assert (await client.cmd("HELO client.test")).startswith("250 ")
        await client.send(segment.encode())
        await refused_and_closed(client)
    finally:
        await client.close()
    assert sample("mailsluice_ingest_protocol_violations_total", kind="pipelining") == before + 1


async def test_before_any_helo_a_pipelined_command_is_refused(ingest: IngestService) -> None:
    client = await RawClient.connect(ingest.port)
    try:
        await client.send(b"NOOP\r\nNOOP\r\n")
        await refused_and_closed(client)
    finally:
        await client.close()


async def test_after_ehlo_mail_and_rcpt_may_be_pipelined(
    ingest: IngestService, domain: str
) -> None:
    client = await RawClient.connect(ingest.port)
    try:
        assert "250-PIPELINING" in (await client.cmd("EHLO client.test")).split("\n")
        await client.send(f"{MAIL}\r\nRCPT TO:<r@{domain}>\r\n".encode())
        assert await client.reply() == replies.S250_SENDER_OK
        assert await client.reply() == replies.S250_RCPT_OK
        assert await client.cmd("QUIT") == replies.S221_BYE
    finally:
        await client.close()


# --- AUTH is a command to wait on, SASL responses included -------------------------------------


async def test_auth_then_mail_and_rcpt_in_one_segment_is_refused(
    submission: IngestService, domain: str
) -> None:
    client = await tls_session(submission.port)
    try:
        await client.send(f"{PLAIN}\r\n{MAIL}\r\nRCPT TO:<r@{domain}>\r\n".encode())
        await refused_and_closed(client)
    finally:
        await client.close()


async def test_a_sasl_response_with_commands_behind_it_is_refused(
    submission: IngestService, domain: str
) -> None:
    client = await tls_session(submission.port)
    try:
        assert (await client.cmd("AUTH LOGIN")).startswith("334 ")
        assert (await client.cmd(base64.b64encode(b"app").decode())).startswith("334 ")
        password = base64.b64encode(b"app-secret").decode()
        await client.send(f"{password}\r\n{MAIL}\r\nRCPT TO:<r@{domain}>\r\n".encode())
        await refused_and_closed(client)
    finally:
        await client.close()


async def test_auth_waited_on_still_authenticates(submission: IngestService) -> None:
    client = await tls_session(submission.port)
    try:
        assert (await client.cmd("AUTH LOGIN")).startswith("334 ")
        assert (await client.cmd(base64.b64encode(b"app").decode())).startswith("334 ")
        reply = await client.cmd(base64.b64encode(b"app-secret").decode())
        assert reply == "235 2.7.0 Authentication successful"
        assert await client.cmd(MAIL) == replies.S250_SENDER_OK
    finally:
        await client.close()


# --- STARTTLS ------------------------------------------------------------------------------------


async def test_a_second_starttls_inside_tls_is_refused(submission: IngestService) -> None:
    client = await tls_session(submission.port)
    try:
        assert await client.cmd("STARTTLS") == replies.S503_TLS_ACTIVE
        assert await client.cmd("NOOP") == replies.S250_OK  # still talking, over the same TLS
    finally:
        await client.close()


async def test_starttls_unavailable_has_an_enhanced_code(ingest: IngestService) -> None:
    client = await RawClient.connect(ingest.port)
    try:
        assert "250-STARTTLS" not in (await client.cmd("EHLO client.test")).split("\n")
        assert await client.cmd("STARTTLS") == "454 4.7.0 TLS not available"
    finally:
        await client.close()


# --- unknown commands and control characters ----------------------------------------------------


async def test_unknown_commands_count_to_our_limit_with_500_5_5_2(ingest: IngestService) -> None:
    client = await RawClient.connect(ingest.port)
    try:
        for _ in range(7):  # aiosmtpd alone closes at the 6th with its own 502
            assert await client.cmd("BOGUS") == "500 5.5.2 Error: command not recognized"
        assert await client.cmd("BOGUS") == replies.S500_UNKNOWN_COMMAND
        assert await client.reply() == replies.S421_TOO_MANY_ERRORS
        assert await client.closed()
    finally:
        await client.close()


@pytest.mark.parametrize(
    "command",
    [b"\x1b[2J\x1b[31mX", b"BEL\x07\x07", b"N\x00UL", b"A\rB", b"\x1b]0;title\x07"],
)
async def test_unknown_commands_are_not_echoed_with_control_bytes(
    ingest: IngestService, command: bytes
) -> None:
    client = await RawClient.connect(ingest.port)
    try:
        await client.send(command + b"\r\n")
        raw = await client.reader.readuntil(b"\r\n")
        assert raw == replies.S500_UNKNOWN_COMMAND.encode() + b"\r\n"
        assert await client.cmd("NOOP") == replies.S250_OK
    finally:
        await client.close()


@pytest.mark.parametrize("verb", ["EHLO", "HELO"])
@pytest.mark.parametrize("name", [b"client\x00.test", b"\x1b[31mclient.test", b"cli\x07ent"])
async def test_helo_names_with_control_characters_get_501(
    ingest: IngestService, verb: str, name: bytes
) -> None:
    client = await RawClient.connect(ingest.port)
    try:
        await client.send(verb.encode() + b" " + name + b"\r\n")
        raw = await client.reader.readuntil(b"\r\n")
        assert raw == f"501 5.5.2 Invalid {verb} hostname\r\n".encode()
        assert await client.cmd(MAIL) == "503 5.5.1 Error: send HELO first"
    finally:
        await client.close()


# --- enhanced codes on MAIL parameters -----------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "reply"),
    [
        ("SMTPUTF8", "555 5.5.4 Error: SMTPUTF8 not supported"),
        ("SMTPUTF8=YES", "501 5.5.4 Error: SMTPUTF8 takes no arguments"),
        ("BODY=BINARYMIME", "501 5.5.4 Error: BODY can only be one of 7BIT, 8BITMIME"),
    ],
)
async def test_mail_parameter_replies_have_enhanced_codes(
    ingest: IngestService, params: str, reply: str
) -> None:
    client = await RawClient.connect(ingest.port)
    try:
        assert (await client.cmd("EHLO client.test")).startswith("250-")
        assert await client.cmd(f"{MAIL} {params}") == reply
        assert await client.cmd(f"{MAIL} BODY=8BITMIME") == replies.S250_SENDER_OK
    finally:
        await client.close()
