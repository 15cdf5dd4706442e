"""What the ingest relies on in aiosmtpd; this module fails when an aiosmtpd release changes it.

- The undocumented parts session.PRIVATE_API names, each checked for the shape we assume, and
  the documented extension points we override, checked for their signatures.
- aiosmtpd's own reply texts, which replies.BUILTIN_REWRITES must match word for word to add
  enhanced status codes (otherwise clients silently get replies without them).
- Each override of session.IngestSMTP, through a real connection on loopback: the ingest's own
  handler, with Kafka unreachable (DATA answers 451; nothing here needs the broker).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import ipaddress
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiosmtpd.smtp
import pytest
from aiosmtpd.smtp import SMTP, AuthResult
from support.eventually import eventually
from support.ingest import RawClient
from support.loopback import free_port
from support.metrics import sample
from support.tls import server_context, trusting_client_context

from mailsluice.ingest import replies
from mailsluice.ingest.caps import Registry
from mailsluice.ingest.handler import IngestHandler
from mailsluice.ingest.plan import PoolPolicy
from mailsluice.ingest.protocol import SessionLimits
from mailsluice.ingest.publish import Publisher
from mailsluice.ingest.session import PRIVATE_API, IngestSMTP
from mailsluice.ingest.verdicts import unverified_mx
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.policy.rollup import load_rollup


def params(function: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(function).parameters)


# --- a real connection to IngestSMTP ------------------------------------------------------------

LIMITS = SessionLimits(
    max_messages=1,
    max_errors=3,
    session_timeout_s=60.0,
    greet_pause_s=0.0,
    trusted_networks=(ipaddress.ip_network("127.0.0.0/8"),),
)


@dataclass
class Server:
    port: int
    registry: Registry
    rejected: list[tuple[str, str, str]]

    def connection(self) -> IngestSMTP:
        (connection,) = self.registry.connections
        return connection


@contextlib.asynccontextmanager
async def ingest_smtp(
    limits: SessionLimits = LIMITS, *, idle_s: float = 60.0, tls: ssl.SSLContext | None = None
) -> AsyncIterator[Server]:
    publisher = Publisher(
        KafkaSettings(bootstrap=f"127.0.0.1:{free_port()}", request_timeout_ms=1000),
        max_message_size=4096,
        publish_timeout_s=2.0,
    )
    handler = IngestHandler(
        hostname="ingest.test",
        publisher=publisher,
        is_suppressed=lambda _address, _scopes: False,
        mx_lookup=unverified_mx,
        rollup=load_rollup(),
        max_recipients=10,
        pools=PoolPolicy(
            "X-Mailsluice-Pool", "default", frozenset({"default"}), frozenset({"default"})
        ),
    )
    registry = Registry()
    rejected: list[tuple[str, str, str]] = []

    def on_rejected(server: IngestSMTP, recipient: str, reply: str, reason: str) -> None:
        rejected.append((recipient, reply, reason))
        handler.record_rejection(server, recipient, reply, reason)

    def factory() -> IngestSMTP:
        return IngestSMTP(
            handler,
            limits=limits,
            registry=registry,
            on_rejected=on_rejected,
            data_size_limit=4096,
            hostname="ingest.test",
            ident=replies.S220_READY_SUFFIX,
            tls_context=tls,
            timeout=idle_s,
            auth_require_tls=True,
        )

    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    try:
        yield Server(server.sockets[0].getsockname()[1], registry, rejected)
    finally:
        server.close()
        for connection in list(registry.connections):
            connection.close_with(replies.S421_SHUTTING_DOWN)
        await server.wait_closed()
        await publisher.stop()


# --- the private API ----------------------------------------------------------------------------


async def test_every_private_part_we_name_has_the_shape_we_assume() -> None:
    async with ingest_smtp() as server:
        client = await RawClient.connect(server.port)
        try:
            reader = server.connection()._reader
            shapes = {
                "_handle_client": inspect.iscoroutinefunction(SMTP._handle_client)
                and params(SMTP._handle_client) == ["self"],
                "_timeout_cb": not inspect.iscoroutinefunction(SMTP._timeout_cb)
                and params(SMTP._timeout_cb) == ["self"],
                "_reader": isinstance(reader, asyncio.StreamReader)
                and isinstance(getattr(reader, "_limit", None), int)
                and isinstance(getattr(reader, "_buffer", None), bytearray),
                "command_size_limits": isinstance(SMTP.command_size_limits, collections.defaultdict)
                and SMTP.command_size_limits.default_factory is not None
                and SMTP.command_size_limits.default_factory() == SMTP.command_size_limit == 512,
                "BOGUS_LIMIT": isinstance(aiosmtpd.smtp.BOGUS_LIMIT, int)
                and "bogus_budget = BOGUS_LIMIT" in inspect.getsource(SMTP._handle_client),
                "_getaddr": not inspect.iscoroutinefunction(SMTP._getaddr)
                and params(SMTP._getaddr) == ["self", "arg"],
            }
        finally:
            await client.close()
    assert set(shapes) == set(PRIVATE_API), "check every private part session.py names"
    assert [name for name, ok in shapes.items() if not ok] == []


PATHS = [
    "<a@b.test>",
    " <a@b.test>",
    "<a@b.test> SIZE=100",
    "<a.b+c@x.y>  BODY=8BITMIME SMTPUTF8",
    "<a@b.test>\tSIZE=1",
    "<a@b.test>SIZE=1",
    "<a@b.test> (comment) SIZE=1",
    "<>",
    "<> SIZE=5",
    "<a..b@c.test>",
    "<.a@c.test>",
    '<"q r"@b.test>',
    "<a@[127.0.0.1]>",
    "<@x.test:a@b.test>",
    "<a%b@c.test>",
    "<a!b@c.test>",
    "<a@b.test",
    "a@b.test",
    "a@b.test SIZE=1",
    "<a@b..test>",
    "<a@-b.test>",
    "<üser@b.test>",
    "<a@b.test> ",
    "<" + "x" * 70 + "@b.test>",
    "",
]


@pytest.mark.parametrize("limit", [0, 64])
def test_the_fast_path_parse_equals_aiosmtpds(limit: int) -> None:
    """_getaddr: our everyday-form shortcut reads every path exactly as aiosmtpd's own parse."""
    ours, theirs = IngestSMTP.__new__(IngestSMTP), SMTP.__new__(SMTP)
    ours.local_part_limit = theirs.local_part_limit = limit
    assert [ours._getaddr(p) for p in PATHS] == [SMTP._getaddr(theirs, p) for p in PATHS]


async def test_asyncio_keeps_unread_bytes_in_the_stream_buffer() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(b"EHLO client.test\r\nMAIL FROM:<a@b.test>\r\n")
    assert await reader.readuntil() == b"EHLO client.test\r\n"
    assert bytes(getattr(reader, "_buffer", b"")) == b"MAIL FROM:<a@b.test>\r\n"
    await reader.readuntil()
    assert not getattr(reader, "_buffer", b"x")


@pytest.mark.parametrize(
    ("name", "arguments", "coroutine"),
    [
        ("_create_envelope", ["self"], False),
        ("push", ["self", "status"], True),
        ("smtp_EHLO", ["self", "hostname"], True),
        ("smtp_HELO", ["self", "hostname"], True),
        ("smtp_STARTTLS", ["self", "arg"], True),
        ("smtp_DATA", ["self", "arg"], True),
        ("smtp_MAIL", ["self", "arg"], True),
        ("smtp_RCPT", ["self", "arg"], True),
        ("smtp_AUTH", ["self", "arg"], True),
        ("smtp_RSET", ["self", "arg"], True),
        ("smtp_NOOP", ["self", "arg"], True),
        ("smtp_VRFY", ["self", "arg"], True),
        ("smtp_EXPN", ["self", "arg"], True),
        ("smtp_HELP", ["self", "arg"], True),
        ("challenge_auth", ["self", "challenge", "encode_to_b64", "log_client_response"], True),
        ("connection_made", ["self", "transport"], False),
        ("connection_lost", ["self", "error"], False),
        # smtp_auth.py's mechanisms (handler auth_<MECHANISM> hooks) ask through it.
        ("challenge_auth", ["self", "challenge", "encode_to_b64", "log_client_response"], True),
    ],
)
def test_documented_extension_points_keep_their_signatures(
    name: str, arguments: list[str], coroutine: bool
) -> None:
    method = getattr(SMTP, name)
    assert params(method) == arguments
    assert inspect.iscoroutinefunction(method) == coroutine


def test_the_constructor_takes_what_the_service_passes() -> None:
    inspect.signature(SMTP).bind(
        object(),
        data_size_limit=1024,
        hostname="ingest.test",
        ident=replies.S220_READY_SUFFIX,
        tls_context=None,
        timeout=300.0,
        auth_require_tls=True,
        authenticator=None,
    )


# --- aiosmtpd's own reply texts -----------------------------------------------------------------

EHLO = "EHLO client.test"
MAIL = "MAIL FROM:<a@b.test>"
RCPT = "RCPT TO:<c@d.test>"
PLAIN = "AUTH PLAIN AGJvYgBzZWNyZXQ="


@dataclass(frozen=True)
class Builtin:
    reply: str  # a key of BUILTIN_REWRITES, or a text starting with a rewritten prefix
    before: tuple[str, ...]
    line: bytes


BUILTINS = [
    Builtin("500 Command line too long", (EHLO,), b"NOOP " + b"x" * 600),
    Builtin(
        "500 Line too long (see RFC5321 4.5.3.1.6)",
        (EHLO, MAIL, RCPT, "DATA"),
        b"Subject: x\r\n\r\n" + b"y" * 1001 + b"\r\n.",
    ),
    Builtin(
        "552 Error: message size exceeds fixed maximum message size",
        (EHLO,),
        b"MAIL FROM:<a@b.test> SIZE=5000",
    ),
    Builtin("552 Error: Too much mail data", (EHLO, MAIL, RCPT, "DATA"), b"z\r\n" * 2000 + b"."),
    Builtin("500 Error: bad syntax", (), b""),
    Builtin("500 Error: strict ASCII mode", (EHLO,), "MAIL FROM:<é@b.test>".encode()),
    Builtin("503 Error: need MAIL command", (EHLO,), RCPT.encode()),
    Builtin("503 Error: need RCPT command", (EHLO, MAIL), b"DATA"),
    Builtin("503 Error: nested MAIL command", (EHLO, MAIL), MAIL.encode()),
    Builtin("503 Error: send HELO first", (), MAIL.encode()),
    Builtin("503 Error: send EHLO first", (), PLAIN.encode()),
    Builtin("503 Already authenticated", (EHLO, PLAIN), PLAIN.encode()),
    Builtin("553 5.1.3 Error: malformed address", (EHLO,), b"MAIL FROM:<(comment)>"),
    Builtin(
        "555 MAIL FROM parameters not recognized or not implemented",
        (EHLO,),
        b"MAIL FROM:<a@b.test> FOO=1",
    ),
    Builtin(
        "555 RCPT TO parameters not recognized or not implemented",
        (EHLO, MAIL),
        b"RCPT TO:<c@d.test> FOO=1",
    ),
    Builtin("502 EXPN not implemented", (), b"EXPN staff"),
    Builtin("454 TLS not available", (EHLO,), b"STARTTLS"),
    Builtin(
        "501 Error: BODY can only be one of 7BIT, 8BITMIME",
        (EHLO,),
        b"MAIL FROM:<a@b.test> BODY=BINARYMIME",
    ),
    Builtin(
        "501 Error: SMTPUTF8 takes no arguments", (EHLO,), b"MAIL FROM:<a@b.test> SMTPUTF8=YES"
    ),
    Builtin("501 Error: SMTPUTF8 disabled", (EHLO,), b"MAIL FROM:<a@b.test> SMTPUTF8"),
    Builtin("221 Bye", (), b"QUIT"),
    Builtin("250 OK", (), b"NOOP"),
    Builtin("501 Syntax: HELO hostname", (), b"HELO"),
    Builtin('500 Error: command "BOGUS" not recognized', (), b"BOGUS"),
    Builtin("500 Error: command 'AUTH' not recognized", ("HELO client.test",), PLAIN.encode()),
]


@contextlib.asynccontextmanager
async def plain_aiosmtpd() -> AsyncIterator[int]:
    """aiosmtpd as released, without our subclass or a handler."""

    def factory() -> SMTP:
        return SMTP(
            object(),
            data_size_limit=4096,
            hostname="plain.test",
            auth_require_tls=False,
            authenticator=lambda *_: AuthResult(success=True),
        )

    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("case", BUILTINS, ids=[c.reply for c in BUILTINS])
async def test_aiosmtpd_still_sends_the_replies_we_rewrite(case: Builtin) -> None:
    async with plain_aiosmtpd() as port:
        client = await RawClient.connect(port)
        try:
            for line in case.before:
                assert (await client.cmd(line))[:1] in "23", line
            await client.send(case.line + b"\r\n")
            assert await client.reply() == case.reply
        finally:
            await client.close()
    assert replies.rewrite(case.reply) != case.reply


def test_the_builtin_cases_cover_every_rewrite() -> None:
    exact = {case.reply for case in BUILTINS} & set(replies.BUILTIN_REWRITES)
    assert exact == set(replies.BUILTIN_REWRITES)


# --- each override, through a real connection ---------------------------------------------------


async def test_greeting_pause_refuses_an_early_talker() -> None:
    """_handle_client: the pause runs before aiosmtpd's loop sends the greeting."""
    before = sample("mailsluice_ingest_protocol_violations_total", kind="early_talker")
    async with ingest_smtp(replace(LIMITS, greet_pause_s=0.5)) as server:
        early = await RawClient.connect(server.port, greeting=False)
        await early.send(b"EHLO client.test\r\n")
        polite = await RawClient.connect(server.port, greeting=False)
        try:
            assert await polite.reply() == "220 ingest.test ESMTP Mailsluice"
            assert await early.reply() == replies.S554_PIPELINING
            assert await early.closed()
            assert (await polite.cmd("EHLO client.test")).startswith("250-ingest.test")
        finally:
            await early.close()
            await polite.close()
    after = sample("mailsluice_ingest_protocol_violations_total", kind="early_talker")
    assert after == before + 1


@pytest.mark.parametrize(
    ("before", "command"),
    [
        ((), "EHLO client.test"),
        ((), "HELO client.test"),
        ((EHLO,), "STARTTLS"),
        ((EHLO, MAIL, RCPT), "DATA"),
    ],
)
async def test_input_pending_after_a_command_to_wait_on_is_refused(
    before: tuple[str, ...], command: str
) -> None:
    """_reader: unread bytes when the reply is due reveal the pipelining."""
    async with ingest_smtp() as server:
        client = await RawClient.connect(server.port)
        try:
            for line in before:
                assert (await client.cmd(line))[:1] == "2", line
            await client.send(f"{command}\r\nNOOP\r\n".encode())
            assert await client.reply() == replies.S554_PIPELINING
            assert await client.closed()
        finally:
            await client.close()


async def test_idle_timeout_is_announced() -> None:
    """_timeout_cb: aiosmtpd's idle timer ends the session with our 421."""
    async with ingest_smtp(idle_s=0.3) as server:
        client = await RawClient.connect(server.port)
        try:
            assert await client.reply(wait_s=10) == replies.S421_IDLE_TIMEOUT
            assert await client.closed()
        finally:
            await client.close()


async def test_session_timeout_is_announced() -> None:
    async with ingest_smtp(replace(LIMITS, session_timeout_s=0.3)) as server:
        client = await RawClient.connect(server.port)
        try:
            assert await client.reply(wait_s=10) == replies.S421_SESSION_TIMEOUT
            assert await client.closed()
        finally:
            await client.close()


def padded_mail(length: int) -> str:
    """A valid MAIL command of exactly `length` octets (SIZE padded with zeros)."""
    line = "MAIL FROM:<a@b.test> SIZE=100"
    return line.replace("SIZE=", "SIZE=" + "0" * (length - len(line)))


async def test_command_line_limits_do_not_grow_with_each_ehlo() -> None:
    """command_size_limits: per connection, reset by every EHLO (512 + 26 for SIZE)."""
    async with ingest_smtp() as server:
        client = await RawClient.connect(server.port)
        other = await RawClient.connect(server.port)
        try:
            for _ in range(3):
                assert (await client.cmd(EHLO)).startswith("250-")
            assert (await other.cmd(EHLO)).startswith("250-")
            for connection in (client, other):
                assert await connection.cmd(padded_mail(539)) == replies.S500_COMMAND_TOO_LONG
                assert await connection.cmd(padded_mail(538)) == replies.S250_SENDER_OK
        finally:
            await client.close()
            await other.close()


async def test_push_rewrites_replies_and_counts_errors_to_the_limit() -> None:
    async with ingest_smtp() as server:
        client = await RawClient.connect(server.port)
        try:
            assert await client.cmd("NOOP") == "250 2.0.0 Ok"
            assert await client.cmd("BOGUS") == replies.S500_UNKNOWN_COMMAND
            assert await client.cmd(MAIL) == "503 5.5.1 Error: send HELO first"
            assert await client.cmd("HELO") == "501 5.5.4 Syntax: HELO hostname"
            assert await client.reply() == replies.S421_TOO_MANY_ERRORS
            assert await client.closed()
        finally:
            await client.close()


async def test_unknown_commands_count_to_our_error_limit_not_aiosmtpds() -> None:
    """BOGUS_LIMIT: aiosmtpd's own budget (502 and close at the 6th) no longer applies."""
    async with ingest_smtp(replace(LIMITS, max_errors=8)) as server:
        client = await RawClient.connect(server.port)
        try:
            for _ in range(7):
                assert await client.cmd("BOGUS") == replies.S500_UNKNOWN_COMMAND
            assert (
                await client.cmd("BOGUS")
                == (f"{replies.S500_UNKNOWN_COMMAND}\n{replies.S421_TOO_MANY_ERRORS}")
                or (await client.reply()) == replies.S421_TOO_MANY_ERRORS
            )
            assert await client.closed()
        finally:
            await client.close()


async def test_help_lists_the_commands_we_override() -> None:
    """HELP finds commands by aiosmtpd's @syntax attributes, which our overrides carry over."""
    async with ingest_smtp() as server:
        client = await RawClient.connect(server.port)
        try:
            assert await client.cmd("HELP") == (
                "250 Supported commands: AUTH DATA EHLO HELO HELP MAIL NOOP QUIT RCPT RSET VRFY"
            )
            assert await client.cmd("HELP MAIL") == "250 Syntax: MAIL FROM: <address>"
        finally:
            await client.close()


async def test_envelopes_are_ours_and_a_421_closes() -> None:
    """_create_envelope: the handler's MAIL hook needs an IngestEnvelope (else 451); after
    one message (max_messages=1, Kafka unreachable: 451) the next MAIL gets 421 and a close."""
    async with ingest_smtp() as server:
        client = await RawClient.connect(server.port)
        try:
            await client.cmd(EHLO)
            assert await client.cmd(MAIL) == replies.S250_SENDER_OK
            assert await client.cmd("RSET") == "250 2.0.0 Ok"
            assert await client.cmd(MAIL) == replies.S250_SENDER_OK
            assert await client.cmd(RCPT) == replies.S250_RCPT_OK
            assert (await client.cmd("DATA")).startswith("354 ")
            assert await client.cmd("Subject: x\r\n\r\nbody\r\n.") == (
                replies.S451_QUEUE_UNAVAILABLE
            )
            assert await client.cmd(MAIL) == replies.S421_TOO_MANY_MESSAGES
            assert await client.closed()
        finally:
            await client.close()


async def test_mail_and_rcpt_gates_run_before_aiosmtpd() -> None:
    strangers = replace(LIMITS, trusted_networks=())
    async with ingest_smtp(strangers) as server:
        client = await RawClient.connect(server.port)
        try:
            await client.cmd(EHLO)
            assert await client.cmd(MAIL) == replies.S530_AUTH_REQUIRED
        finally:
            await client.close()
    async with ingest_smtp() as server:
        client = await RawClient.connect(server.port)
        try:
            await client.cmd(EHLO)
            assert await client.cmd("MAIL FROM:<a%b@relay.test>") == replies.S501_BAD_SENDER
            assert await client.cmd(MAIL) == replies.S250_SENDER_OK
            assert await client.cmd("RCPT TO:<u@[127.0.0.1]>") == replies.S554_RELAY_DENIED
            assert server.rejected == [
                ("<u@[127.0.0.1]>", replies.S554_RELAY_DENIED, "relay_denied")
            ]
        finally:
            await client.close()


async def test_a_connection_is_registered_once_across_starttls(tmp_path: Path) -> None:
    """connection_made runs again over TLS after STARTTLS: one connection all the same."""
    context = server_context(tmp_path, "ingest.test")
    client_context = trusting_client_context()
    opened = sample("mailsluice_ingest_connections_total")
    async with ingest_smtp(tls=context) as server:
        client = await RawClient.connect(server.port)
        try:
            assert "250-STARTTLS" in (await client.cmd(EHLO)).split("\n")
            assert (await client.cmd("STARTTLS")).startswith("220 ")
            await client.writer.start_tls(client_context)
            assert "250-AUTH LOGIN PLAIN" in (await client.cmd(EHLO)).split("\n")
            assert len(server.registry.connections) == 1
            assert sample("mailsluice_ingest_connections_total") == opened + 1
            assert await client.cmd("QUIT") == replies.S221_BYE
        finally:
            await client.close()
        await eventually(
            lambda: not server.registry.connections, within=10, what="the registry to empty"
        )
