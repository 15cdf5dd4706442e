"""The protocol policy added to aiosmtpd, decision by decision (no sockets): what a reply means
for the connection, the MAIL and RCPT gates, early talkers and unauthorised pipelining."""

from __future__ import annotations

import ipaddress

import pytest

from mailsluice.ingest import replies
from mailsluice.ingest.protocol import (
    AfterReply,
    ConnState,
    Refusal,
    SessionLimits,
    after_reply,
    check_helo,
    check_mail,
    check_rcpt,
    check_starttls,
    early_talker,
    is_feedback_path,
    out_of_sync,
    strip_keyword,
)

LIMITS = SessionLimits(
    max_messages=2,
    max_errors=3,
    session_timeout_s=60.0,
    greet_pause_s=0.0,
    trusted_networks=(ipaddress.ip_network("127.0.0.0/8"),),
)
FEEDBACK = SessionLimits(
    max_messages=2,
    max_errors=3,
    session_timeout_s=60.0,
    greet_pause_s=0.0,
    trusted_networks=(),
    feedback_addresses=frozenset({"fbl@mail.sender.test"}),
)


@pytest.mark.parametrize(
    ("reply", "errors_before", "after", "errors_after"),
    [
        ("250 2.0.0 Ok", 0, AfterReply(), 0),
        ("250-SIZE 1000", 2, AfterReply(), 2),  # not final: nothing yet
        ("421 4.4.2 Idle timeout exceeded, closing", 0, AfterReply(close=True), 0),
        ("500 5.5.2 Error: command not recognized", 0, AfterReply(), 1),
        ("530 5.7.0 Authentication required", 1, AfterReply(), 2),
        (
            "503 5.5.1 Error: need MAIL command",
            2,
            AfterReply(then=replies.S421_TOO_MANY_ERRORS, violation="too_many_errors"),
            3,
        ),
        # per-recipient policy verdicts are no protocol errors: a list may hold many
        ("550 5.7.1 Recipient address is suppressed", 2, AfterReply(), 2),
        (
            "450 4.4.3 Recipient domain temporarily unresolvable, try again later",
            2,
            AfterReply(),
            2,
        ),
        (replies.S552_TOO_BIG, 0, AfterReply(transaction="too_big"), 0),
        (replies.S552_SIZE_DECLARED, 0, AfterReply(), 0),
    ],
)
def test_after_reply(reply: str, errors_before: int, after: AfterReply, errors_after: int) -> None:
    conn = ConnState(errors=errors_before)
    assert after_reply(reply, conn, LIMITS) == after
    assert conn.errors == errors_after


@pytest.mark.parametrize("command", ["EHLO", "HELO", "STARTTLS", "AUTH", "DATA"])
def test_commands_that_must_be_waited_on(command: str) -> None:
    assert out_of_sync(command, pending_input=False) is None
    assert out_of_sync(command, pending_input=True) == Refusal(
        replies.S554_PIPELINING, violation="pipelining"
    )


@pytest.mark.parametrize("command", ["MAIL", "RCPT", "NOOP", "RSET", "QUIT"])
def test_rfc2920_pipelinable_commands(command: str) -> None:
    assert out_of_sync(command, pending_input=True) is None


@pytest.mark.parametrize("command", ["MAIL", "RCPT", "NOOP", "RSET", "VRFY", "AUTH"])
def test_without_pipelining_every_command_is_waited_on(command: str) -> None:
    assert out_of_sync(command, pending_input=False, pipelining=False) is None
    assert out_of_sync(command, pending_input=True, pipelining=False) == Refusal(
        replies.S554_PIPELINING, violation="pipelining"
    )


@pytest.mark.parametrize(
    ("hostname", "refused"),
    [
        ("client.test", False),
        ("[192.0.2.1]", False),
        (None, False),  # aiosmtpd's own 501 Syntax
        ("client\x00.test", True),
        ("client\x1b[31m.test", True),
        ("client\x07", True),
        ("a\rb", True),
        ("a\x7f", True),
    ],
)
def test_helo_names_with_control_characters(hostname: str | None, refused: bool) -> None:
    refusal = check_helo("EHLO", hostname)
    assert refusal == (Refusal("501 5.5.2 Invalid EHLO hostname") if refused else None)


def test_starttls_inside_tls() -> None:
    assert check_starttls(tls_active=False) is None
    assert check_starttls(tls_active=True) == Refusal("503 5.5.1 Error: TLS already active")


@pytest.mark.parametrize(
    ("reply", "sent"),
    [
        ('500 Error: command "\x1b[2J\x07" not recognized', replies.S500_UNKNOWN_COMMAND),
        ("500 Error: command 'AUTH' not recognized", replies.S500_UNKNOWN_COMMAND),
        ("502 Could not VRFY \x00\x1b", "502 Could not VRFY ??"),
        ("454 TLS not available", "454 4.7.0 TLS not available"),
        ("501 Error: SMTPUTF8 disabled", "555 5.5.4 Error: SMTPUTF8 not supported"),
    ],
)
def test_replies_are_rewritten_and_never_carry_control_characters(reply: str, sent: str) -> None:
    assert replies.printable(replies.rewrite(reply)) == sent


def test_early_talker() -> None:
    assert early_talker(False) is None
    assert early_talker(True) == Refusal(replies.S554_PIPELINING, violation="early_talker")


@pytest.mark.parametrize(
    ("keyword", "arg", "path"),
    [
        ("FROM:", "FROM:<a@b.test>", "<a@b.test>"),
        ("FROM:", "from: <a@b.test> SIZE=1", "<a@b.test> SIZE=1"),
        ("TO:", "TO:<a@b.test>", "<a@b.test>"),
        ("TO:", "FROM:<a@b.test>", None),
        ("TO:", None, None),
        ("TO:", "", None),
    ],
)
def test_strip_keyword(keyword: str, arg: str | None, path: str | None) -> None:
    assert strip_keyword(keyword, arg) == path


@pytest.mark.parametrize(
    ("arg", "conn", "relay", "draining", "refusal"),
    [
        ("FROM:<a@b.test>", ConnState(), True, False, None),
        ("FROM:<>", ConnState(), True, False, None),
        ("FROM:<a@b.test>", ConnState(), True, True, Refusal(replies.S421_SHUTTING_DOWN)),
        ("FROM:<a@b.test>", ConnState(), False, False, Refusal(replies.S530_AUTH_REQUIRED)),
        (
            "FROM:<a@b.test>",
            ConnState(messages=2),
            True,
            False,
            Refusal(replies.S421_TOO_MANY_MESSAGES, violation="too_many_messages"),
        ),
        ("FROM:<a%b@relay.test>", ConnState(), True, False, Refusal(replies.S501_BAD_SENDER)),
        ("FROM:<a@b@c.test>", ConnState(), True, False, Refusal(replies.S501_BAD_SENDER)),
        # no keyword: aiosmtpd's own syntax reply
        ("<a@b.test>", ConnState(), True, False, None),
    ],
)
def test_check_mail(
    arg: str, conn: ConnState, relay: bool, draining: bool, refusal: Refusal | None
) -> None:
    got = check_mail(arg, conn, LIMITS, relay_allowed=relay, draining=draining)
    assert got == refusal


def test_with_feedback_addresses_a_stranger_may_start_a_transaction() -> None:
    assert check_mail("FROM:<>", ConnState(), FEEDBACK, relay_allowed=False, draining=False) is None


@pytest.mark.parametrize(
    ("arg", "limits", "relay", "refusal"),
    [
        ("TO:<r@d.test>", LIMITS, True, None),
        ("TO:<r@d.test>", LIMITS, False, Refusal(replies.S530_AUTH_REQUIRED)),
        ("TO:<Fbl@MAIL.sender.test>", FEEDBACK, False, None),
        ("TO:<other@mail.sender.test>", FEEDBACK, False, Refusal(replies.S530_AUTH_REQUIRED)),
        (
            "TO:<a%b@relay.test>",
            LIMITS,
            True,
            Refusal(replies.S554_RELAY_DENIED, reason="relay_denied", recipient="<a%b@relay.test>"),
        ),
        (
            "TO:<no-domain>",
            LIMITS,
            True,
            Refusal(replies.S501_BAD_RECIPIENT, reason="syntax", recipient="<no-domain>"),
        ),
        ("<r@d.test>", LIMITS, True, None),  # no keyword: aiosmtpd's own syntax reply
    ],
)
def test_check_rcpt(arg: str, limits: SessionLimits, relay: bool, refusal: Refusal | None) -> None:
    assert check_rcpt(arg, limits, relay_allowed=relay) == refusal


def test_feedback_paths_are_parsed_strictly() -> None:
    addresses = FEEDBACK.feedback_addresses
    assert is_feedback_path("<fbl@mail.sender.test>", addresses)
    assert not is_feedback_path('<"fbl"@mail.sender.test>', addresses)
    assert not is_feedback_path(None, addresses)
    assert not is_feedback_path("<fbl@mail.sender.test>", frozenset())
