"""Bounce messages: RFC 3464 delivery status notifications (multipart/report).

The DSN goes to the original envelope sender with a null reverse-path (the caller sends it
with MAIL FROM:<>); a message with a null sender never gets one (RFC 5321 §4.5.5).
"""

from __future__ import annotations

import re
from email import policy
from email.message import Message
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import formatdate, make_msgid

from mailsluice.contracts.envelope import Envelope
from mailsluice.delivery.transport.client import RecipientResult

# The original's header section is returned up to this size (RFC 3462 text/rfc822-headers).
MAX_RETURNED_HEADERS = 64 * 1024
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_UNSAFE = re.compile(r"[^\x20-\x7e]+")


def _clean(text: str, limit: int = 900) -> str:
    """One line of printable ASCII: report fields must not fold or inject new fields."""
    return " ".join(_UNSAFE.sub(" ", text).split())[:limit]


def original_headers(message: bytes) -> bytes:
    match = _HEADER_END.search(message)
    head = message[: match.start()] if match else message
    return re.sub(rb"\r\n|\r|\n", b"\r\n", head[:MAX_RETURNED_HEADERS]) + b"\r\n"


def remote_mta(remote: str) -> str:
    """'mx.example.net[192.0.2.1]:25' → 'mx.example.net'; '192.0.2.1:25' → '[192.0.2.1]'."""
    if not remote:
        return ""
    name, bracket, _ = remote.partition("[")
    if bracket and name:
        return name
    host = remote.rsplit(":", 1)[0] if remote.count(":") == 1 else remote
    return f"[{host.strip('[]')}]"


def _recipient_block(result: RecipientResult, now: float) -> Message:
    block = Message()
    block["Final-Recipient"] = f"rfc822; {_clean(result.recipient)}"
    block["Action"] = "failed"
    block["Status"] = _clean(result.enhanced) or ("5.0.0" if result.code >= 500 else "4.0.0")
    mta = remote_mta(result.remote)
    if mta:
        block["Remote-MTA"] = f"dns; {_clean(mta)}"
        diagnostic = f"smtp; {result.code} {result.enhanced} {result.text}"
    else:
        diagnostic = f"X-Mailsluice; {result.code} {result.enhanced} {result.text}"
    block["Diagnostic-Code"] = _clean(diagnostic)
    block["Last-Attempt-Date"] = formatdate(now)
    return block


def _human_text(env: Envelope, failures: list[RecipientResult], reporting_mta: str) -> str:
    lines = [
        f"This is the mail system at host {reporting_mta}.",
        "",
        "I'm sorry to have to inform you that your message could not",
        "be delivered to one or more recipients. It's attached below.",
        "",
    ]
    for r in failures:
        where = f" (remote server {remote_mta(r.remote)})" if r.remote else ""
        lines.append(f"<{_clean(r.recipient)}>{where}: {r.code} {r.enhanced} {_clean(r.text)}")
    lines += ["", f"Queue ID: {env.queue_id}", ""]
    return "\n".join(lines)


def build_dsn(
    env: Envelope,
    message: bytes,
    failures: list[RecipientResult],
    *,
    reporting_mta: str,
    now: float,
) -> bytes:
    """The bounce for `failures` of the message `env` carried, as CRLF wire bytes."""
    if not env.sender:
        raise ValueError("no DSN for a message with a null sender")
    if not failures:
        raise ValueError("a DSN needs at least one failed recipient")
    report = MIMEMultipart("report", report_type="delivery-status")
    report["From"] = f"Mail Delivery System <MAILER-DAEMON@{reporting_mta}>"
    report["To"] = f"<{_clean(env.sender)}>"
    report["Subject"] = "Undelivered Mail Returned to Sender"
    report["Date"] = formatdate(now)
    report["Message-ID"] = make_msgid(domain=reporting_mta)
    report["Auto-Submitted"] = "auto-replied"  # RFC 3834: no auto-replies to this
    report.preamble = "This is a MIME-encapsulated message."

    report.attach(MIMEText(_human_text(env, failures, reporting_mta), "plain", "utf-8"))

    per_message = Message()
    per_message["Reporting-MTA"] = f"dns; {reporting_mta}"
    per_message["X-Mailsluice-Queue-ID"] = _clean(env.queue_id)
    per_message["Arrival-Date"] = formatdate(env.received_at)
    status = MIMEBase("message", "delivery-status")
    status.set_payload([per_message, *(_recipient_block(r, now) for r in failures)])
    report.attach(status)

    headers = MIMEBase("text", "rfc822-headers")
    headers.set_payload(original_headers(message).decode("ascii", "surrogateescape"))
    report.attach(headers)
    return report.as_bytes(policy=policy.SMTP)
