"""Every SMTP reply the ingest sends, with RFC 3463 enhanced status codes.

aiosmtpd's own replies that lack an enhanced code are rewritten through BUILTIN_REWRITES so a
client always sees one consistent dialect.
"""

from __future__ import annotations

import re

S220_READY_SUFFIX = "ESMTP Mailsluice"
# Added to aiosmtpd's EHLO keywords, before its closing "250 HELP" (RFC 2920, RFC 2034).
EHLO_EXTENSIONS = ("250-PIPELINING", "250-ENHANCEDSTATUSCODES")
S221_BYE = "221 2.0.0 Bye"
S250_OK = "250 2.0.0 Ok"
S250_SENDER_OK = "250 2.1.0 Sender ok"
S250_RCPT_OK = "250 2.1.5 Recipient ok"
S250_QUEUED = "250 2.0.0 Ok: queued as {queue_id}"
S250_FEEDBACK = "250 2.0.0 Ok: {count} complaint(s) recorded"

S421_TOO_MANY_MESSAGES = "421 4.7.0 Too many messages on this connection, closing"
S421_TOO_MANY_ERRORS = "421 4.7.0 Too many errors on this connection, closing"
S421_IDLE_TIMEOUT = "421 4.4.2 Idle timeout exceeded, closing"
S421_SESSION_TIMEOUT = "421 4.4.2 Session time limit exceeded, closing"
S421_SHUTTING_DOWN = "421 4.3.2 Service shutting down, closing"
# Resource caps (caps.py). 4.3.2: system not accepting network messages (RFC 3463).
S421_TOO_MANY_CONNECTIONS = "421 4.3.2 Too many connections, try again later"
S421_TOO_MANY_FROM_IP = "421 4.7.0 Too many connections from {ip}, try again later"
S421_TOO_MANY_JUNK = "421 4.7.0 Too many commands without mail on this connection, closing"
S421_TOO_MANY_ABORTED = "421 4.7.0 Too many aborted transactions on this connection, closing"
# RFC 1870 §6.1: the server cannot take a message of this size now; 4.3.1 (RFC 3463).
S452_INSUFFICIENT_STORAGE = "452 4.3.1 Insufficient system storage, try again later"
S421_INSUFFICIENT_STORAGE = "421 4.3.1 Insufficient system storage, closing"
S450_DNS_TEMPFAIL = "450 4.4.3 Recipient domain temporarily unresolvable, try again later"
S451_TEMPFAIL = "451 4.3.0 Temporary failure, try again later"
S451_QUEUE_UNAVAILABLE = "451 4.3.0 Queue temporarily unavailable, try again later"
S452_TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
# A tenant over its quota (tenancy/quota.py) at RCPT: 4.3.1 as the issue asks (the system
# takes no more now); the client keeps the recipient and tries again after `retry` seconds.
S452_OVER_QUOTA = (
    "452 4.3.1 Tenant {tenant} is over its per-{window} quota of {limit} recipients, "
    "try again in {retry} s"
)
# 452 makes a client send the remaining recipients in a later transaction (RFC 5321 §4.5.3.1.10).
S452_FEEDBACK_SEPARATE = "452 4.5.3 Feedback reports go in a transaction of their own"

S500_LINE_TOO_LONG = "500 5.5.2 Line too long"
S500_COMMAND_TOO_LONG = "500 5.5.2 Command line too long"
S501_BAD_RECIPIENT = "501 5.1.3 Bad recipient address syntax"
S501_BAD_SENDER = "501 5.1.7 Bad sender address syntax"
S530_AUTH_REQUIRED = "530 5.7.0 Authentication required"
S550_SUPPRESSED = "550 5.7.1 Recipient address is suppressed"
S550_NO_DOMAIN = "550 5.1.2 Recipient domain does not exist"
S550_POOL_DENIED = "550 5.7.1 Pool not allowed for this sender"
# 5.6.0: the message content is unusable as given (RFC 3463); names what is accepted.
S550_BAD_STREAM = "550 5.6.0 X-Mailsluice-Stream must be transactional or bulk"
# X-Mailsluice-Campaign / X-Mailsluice-Tags not as contracts/campaigns.py wants (controls.py).
S550_BAD_LABELS = "550 5.6.0 X-Mailsluice-Campaign or X-Mailsluice-Tags refused: {error}"
# X-Mailsluice-Track not one of off, opens, clicks, all (controls.py).
S550_BAD_TRACK = "550 5.6.0 X-Mailsluice-Track must be off, opens, clicks or all"
# A message to a feedback-loop address that is no usable complaint report (RFC 5965 ARF);
# 5.6.0: other or undefined media error (RFC 3463).
S550_NOT_FEEDBACK = "550 5.6.0 Not a feedback report (RFC 5965 multipart/report expected)"
S550_FEEDBACK_MALFORMED = "550 5.6.0 Malformed feedback report"
S550_FEEDBACK_NOT_COMPLAINT = "550 5.6.0 Feedback type is not a complaint"
S550_FEEDBACK_NO_RECIPIENT = "550 5.6.0 Feedback report names no usable recipient"
S552_SIZE_DECLARED = "552 5.3.4 Message size exceeds fixed maximum message size"
S552_TOO_BIG = "552 5.3.4 Message too big"
# Judged as queued (line ends CRLF, our headers added): can never fit, so permanent.
S552_TOO_BIG_QUEUED = "552 5.3.4 Message too big once line ends are CRLF"
S554_RELAY_DENIED = "554 5.7.1 Relay access denied"
S554_PIPELINING = "554 5.5.0 SMTP protocol synchronization error, closing"
S556_NULL_MX = "556 5.1.10 Recipient domain does not accept mail (null MX)"

# --- AUTH abuse and sender ownership (auth_guard.py, smtp_auth.py, policy/owners.py) ---
# RFC 4954 §6: 454 tells the client not to prompt for another password; sent during a lockout.
S454_AUTH_LOCKED = "454 4.7.0 Temporary authentication failure"
S501_AUTH_BASE64 = "501 5.5.2 Can't decode base64"
S501_AUTH_SPLIT = "501 5.5.2 Can't split auth value"
S535_AUTH_INVALID = "535 5.7.8 Authentication credentials invalid"
# RFC 4616 §2: a server may refuse an authzid it cannot use; we have no proxy authorisation.
S535_AUTHZID = "535 5.7.8 Authentication failed: authorization identity not supported"
# RFC 6409 §6.1 / Postfix reject_sender_login_mismatch.
S550_SENDER_NOT_OWNED = "550 5.7.1 Sender address rejected: not owned by user {user}"
S550_FROM_NOT_OWNED = "550 5.7.1 From header address rejected: not owned by user {user}"
# Protocol strictness, headers and destinations at RCPT (issue 13).
# Unknown commands are never echoed: the echo would carry the client's control bytes.
S500_UNKNOWN_COMMAND = "500 5.5.2 Error: command not recognized"
S501_BAD_HELO = "501 5.5.2 Invalid {command} hostname"
S503_TLS_ACTIVE = "503 5.5.1 Error: TLS already active"
S454_TLS_UNAVAILABLE = "454 4.7.0 TLS not available"
# RFC 5322 §3.6 allows these fields once; two From (or Date, Message-ID) break DMARC alignment
# and let two parsers read two different messages.
S550_DUPLICATE_HEADER = "550 5.6.0 Message has more than one {name} header field (RFC 5322 3.6)"
# The worker would refuse these MX hosts anyway (no delivery to non-global addresses).
S550_PRIVATE_DESTINATION = "550 5.4.4 Recipient domain's mail servers have no public address"
# The List-Unsubscribe mailto address (unsubscribe+TOKEN@domain): a token that does not verify
# names no mailbox of ours (5.1.1); a good one is recorded at the end of DATA.
S550_BAD_UNSUBSCRIBE = "550 5.1.1 Unknown unsubscribe address"
S452_UNSUBSCRIBE_SEPARATE = "452 4.5.3 Unsubscribe requests go in a transaction of their own"
S250_UNSUBSCRIBED = "250 2.0.0 Ok: {count} unsubscribe request(s) recorded"

# feedback.REJECT_REASONS -> reply.
FEEDBACK_REJECTS: dict[str, str] = {
    "not_report": S550_NOT_FEEDBACK,
    "malformed": S550_FEEDBACK_MALFORMED,
    "not_complaint": S550_FEEDBACK_NOT_COMPLAINT,
    "no_recipient": S550_FEEDBACK_NO_RECIPIENT,
}

# aiosmtpd's built-in replies (exact text) -> ours.
BUILTIN_REWRITES: dict[str, str] = {
    "500 Command line too long": S500_COMMAND_TOO_LONG,
    "500 Line too long (see RFC5321 4.5.3.1.6)": S500_LINE_TOO_LONG,
    "552 Error: message size exceeds fixed maximum message size": S552_SIZE_DECLARED,
    "552 Error: Too much mail data": S552_TOO_BIG,
    "500 Error: bad syntax": "500 5.5.2 Error: bad syntax",
    "500 Error: strict ASCII mode": "500 5.5.2 Error: non-ASCII input without SMTPUTF8",
    "503 Error: need MAIL command": "503 5.5.1 Error: need MAIL command",
    "503 Error: need RCPT command": "503 5.5.1 Error: need RCPT command",
    "503 Error: nested MAIL command": "503 5.5.1 Error: nested MAIL command",
    "503 Error: send HELO first": "503 5.5.1 Error: send HELO first",
    "503 Error: send EHLO first": "503 5.5.1 Error: send EHLO first",
    "503 Already authenticated": "503 5.5.1 Already authenticated",
    "553 5.1.3 Error: malformed address": "501 5.1.3 Bad address syntax",
    "555 MAIL FROM parameters not recognized or not implemented": (
        "555 5.5.4 MAIL FROM parameters not recognized or not implemented"
    ),
    "555 RCPT TO parameters not recognized or not implemented": (
        "555 5.5.4 RCPT TO parameters not recognized or not implemented"
    ),
    "502 EXPN not implemented": "502 5.5.1 EXPN not implemented",
    "454 TLS not available": S454_TLS_UNAVAILABLE,
    "501 Error: BODY can only be one of 7BIT, 8BITMIME": (
        "501 5.5.4 Error: BODY can only be one of 7BIT, 8BITMIME"
    ),
    "501 Error: SMTPUTF8 takes no arguments": "501 5.5.4 Error: SMTPUTF8 takes no arguments",
    # SMTPUTF8 is not advertised, so it is an unknown MAIL parameter (RFC 5321 §4.1.1.11).
    "501 Error: SMTPUTF8 disabled": "555 5.5.4 Error: SMTPUTF8 not supported",
    "221 Bye": S221_BYE,
    "250 OK": S250_OK,
}

# Reply codes that count as protocol errors toward the per-connection error limit. Per-recipient
# policy verdicts (550, 556, 450, 452) do not: a bulk sender's list may hold many of those.
# 454 too: AUTH hammered during a lockout ends in 421 like any other error stream.
ERROR_CODES = frozenset(
    {"454", "500", "501", "502", "503", "504", "530", "535", "538", "554", "555"}
)


def rewrite(reply: str) -> str:
    if reply in BUILTIN_REWRITES:
        return BUILTIN_REWRITES[reply]
    if reply.startswith("501 Syntax:"):
        return "501 5.5.4 " + reply[4:]
    if reply.startswith("500 Error: command "):
        return S500_UNKNOWN_COMMAND
    return reply


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def printable(reply: str) -> str:
    """A reply line without control characters: some replies echo what the client sent."""
    return _CONTROL.sub("?", reply)


def code_of(reply: str) -> str:
    return reply[:3]


def enhanced_of(reply: str) -> str:
    parts = reply.split(" ", 2)
    return parts[1] if len(parts) > 1 and parts[1][:1].isdigit() and "." in parts[1] else ""


def text_of(reply: str) -> str:
    parts = reply.split(" ", 2)
    return parts[2] if enhanced_of(reply) and len(parts) > 2 else reply[4:]
