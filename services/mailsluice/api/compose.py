"""One recipient's message and its queue record: the rendered parts made into an RFC 5322
message with the standard library's MIME classes (CRLF line ends), then one queue record per
recipient (each has its own content), routed like ingest's by the provider rollup.

The fields the API writes itself: From, To, Subject, Date, Message-ID (at the sender's
domain), MIME-Version, X-Mailsluice-Id (how a feedback-loop complaint finds the message),
List-Id when the request names a list; then the request's extra fields. text and html make a
multipart/alternative; attachments a multipart/mixed around it, each encoded once per request
and shared by every recipient's message. A part that is ASCII with short lines goes as 7bit,
anything else as UTF-8 quoted-printable; a non-ASCII subject or display name as encoded words.

Why `email.mime` (compat32 messages) and not `EmailMessage` with policy SMTP: the latter parses
every header it is given, about 3 ms a recipient, which held the API near 300 recipients a
second per core; these classes take the values as given, so every value here is checked first
(models.py: addresses, names and header values without line breaks; the subject made one line
by render.py).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from datetime import UTC, datetime
from email import encoders
from email.charset import QP, Charset
from email.generator import BytesGenerator
from email.header import Header
from email.message import Message
from email.mime.application import MIMEApplication
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.nonmultipart import MIMENonMultipart
from email.mime.text import MIMEText
from email.policy import Compat32
from email.utils import format_datetime, formataddr
from functools import cached_property
from typing import Any

from mailsluice.api.models import Mailbox
from mailsluice.api.render import Rendered
from mailsluice.contracts.envelope import (
    ENVELOPE_HEADER,
    ID_HEADER,
    Envelope,
    Stream,
    encode_envelope,
    id_field_value,
)
from mailsluice.contracts.suppressions import Scope, scopes_for
from mailsluice.contracts.topics import queue_topic
from mailsluice.kafka.producers import Send

MAX_LINE = 998  # RFC 5322 2.1.1, without the CRLF


class _Lines(Compat32):
    """compat32 with CRLF, writing a short ASCII field as it is: compat32 runs every field
    through a Header, which costs more than the rest of a message's header together."""

    def fold_binary(self, name: str, value: Any) -> bytes:
        if isinstance(value, str) and _plain(name, value):
            return f"{name}: {value}{self.linesep}".encode("ascii")
        return super().fold_binary(name, value)


def _plain(name: str, value: str) -> bool:
    """ASCII, one line, and short enough for one (RFC 5322 2.1.1: 998 characters)."""
    short = len(name) + len(value) < MAX_LINE - 2
    return short and value.isascii() and "\r" not in value and "\n" not in value


CRLF = _Lines(linesep="\r\n")
UTF8_QP = Charset("utf-8")
UTF8_QP.body_encoding = QP
# A subject word longer than this cannot be folded as it is: it goes as encoded words.
MAX_PLAIN_WORD = 900


# The record batch around one record (batch header, record varints): well under this.
BATCH_OVERHEAD_BYTES = 1024


@dataclass(frozen=True)
class Part:
    """A decoded attachment."""

    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True)
class Letter:
    """What every recipient's message of one request shares."""

    tenant: str
    sender: Mailbox
    pool: str
    stream: Stream
    campaign: str
    tags: tuple[str, ...]
    list_id: str
    headers: tuple[tuple[str, str], ...]
    attachments: tuple[Part, ...]
    request_key: str  # the Idempotency-Key, else the request's own id
    tracking: str = ""  # the request's, else the tenant's ("" : the pool's default)

    @cached_property
    def scopes(self) -> tuple[Scope, ...]:
        """The suppression scopes every message of the request falls in."""
        return scopes_for(tenant=self.tenant, sender=self.sender.email, list_id=self.list_id)

    @property
    def sender_domain(self) -> str:
        return self.sender.email.rpartition("@")[2]

    @cached_property
    def attached(self) -> tuple[Message, ...]:
        """The attachments as MIME parts, base64-encoded once for every recipient."""
        return tuple(_attachment(part) for part in self.attachments)


def _attachment(part: Part) -> Message:
    maintype, _, subtype = part.content_type.partition("/")
    if maintype == "application":
        mime: Message = MIMEApplication(part.data, subtype)
    else:
        mime = MIMEBase(maintype, subtype)
        mime.set_payload(part.data)
        encoders.encode_base64(mime)
    mime.add_header("Content-Disposition", "attachment", filename=part.filename)
    return _inner(mime)


def _inner(part: Message) -> Message:
    """A part inside another: the MIME classes give every part a MIME-Version of its own."""
    del part["MIME-Version"]
    return part


def _address(box: Mailbox) -> str:
    return formataddr((box.name, box.email), charset="utf-8")


def _header(value: str) -> str | Header:
    words = value.split()
    if value.isascii() and max((len(w) for w in words), default=0) <= MAX_PLAIN_WORD:
        return value
    return Header(value, "utf-8")


def _text(text: str, subtype: str) -> Message:
    lines = text.splitlines() or [""]
    if text.isascii() and max(len(line) for line in lines) <= MAX_LINE:
        return MIMEText(text, subtype, "us-ascii")
    part = MIMENonMultipart("text", subtype)
    part.set_payload(text, UTF8_QP)  # quoted-printable: long lines, any characters
    return part


def _body(parts: Rendered, boundary: str) -> Message:
    if parts.text is not None and parts.html is not None:
        both = MIMEMultipart("alternative", boundary)
        both.attach(_inner(_text(parts.text, "plain")))
        both.attach(_inner(_text(parts.html, "html")))
        return both
    if parts.text is not None:
        return _text(parts.text, "plain")
    return _text(parts.html or "", "html")


def compose(letter: Letter, to: Mailbox, parts: Rendered, *, queue_id: str, now: float) -> bytes:
    """The message as queued (CRLF line ends)."""
    # Boundaries of our own: "=_" never occurs in quoted-printable or base64, and a 7bit part
    # cannot hold the queue id, which is made now (the generator's own search costs more).
    msg = _body(parts, f"=_{queue_id}_a")
    if letter.attached:
        mixed = MIMEMultipart("mixed", f"=_{queue_id}_m")
        mixed.attach(_inner(msg))
        for attachment in letter.attached:
            mixed.attach(attachment)
        msg = mixed
    msg["From"] = _address(letter.sender)
    msg["To"] = _address(to)
    msg["Subject"] = _header(parts.subject)  # type: ignore[assignment] # a Header is taken too
    msg["Date"] = format_datetime(datetime.fromtimestamp(now, UTC))
    msg["Message-ID"] = f"<{queue_id}@{letter.sender_domain}>"
    del msg["MIME-Version"]  # moved below the fields above, where it is usually read
    msg["MIME-Version"] = "1.0"
    msg[ID_HEADER] = id_field_value(
        queue_id, letter.pool, tenant=letter.tenant, campaign=letter.campaign
    )
    if letter.list_id:
        msg["List-Id"] = f"<{letter.list_id}>"
    for name, value in letter.headers:
        msg[name] = _header(value)  # type: ignore[assignment]
    out = io.BytesIO()
    BytesGenerator(out, mangle_from_=False, policy=CRLF).flatten(msg)
    return out.getvalue()


def message_key(tenant: str, request_key: str, index: int) -> str:
    """What delivery's dedup knows the message by (delivery/worker/dedup.py): the same request
    sent again (same Idempotency-Key) makes the same keys, so a copy written by a request whose
    answer was lost is not delivered twice."""
    digest = hashlib.sha256(f"api\0{tenant}\0{request_key}\0{index}".encode())
    return digest.hexdigest()[:32]


def envelope(
    letter: Letter, to: Mailbox, *, index: int, queue_id: str, routing_key: str, now: float
) -> Envelope:
    return Envelope(
        queue_id=queue_id,
        pool=letter.pool,
        stream=letter.stream,
        sender=letter.sender.email,
        recipients=(to.email,),
        routing_key=routing_key,
        received_at=now,
        user=f"api:{letter.tenant}",
        message_key=message_key(letter.tenant, letter.request_key, index),
        tenant=letter.tenant,
        list_id=letter.list_id,
        campaign=letter.campaign,
        tags=letter.tags,
        tracking=letter.tracking,
    )


def queue_record(env: Envelope, data: bytes) -> Send:
    """The queue record of one message: keyed by routing key, the envelope in a header."""
    return (
        queue_topic(env.pool),
        data,
        env.routing_key.encode(),
        [(ENVELOPE_HEADER, encode_envelope(env))],
    )


def record_size(send: Send) -> int:
    """What one record takes of the producer's request (max_request_size)."""
    _, value, key, headers = send
    extra = sum(len(name) + len(v) for name, v in headers)
    return len(value or b"") + len(key or b"") + extra + BATCH_OVERHEAD_BYTES
