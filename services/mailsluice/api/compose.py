"""One recipient's message and its queue record: the rendered parts made into an RFC 5322
message (`email.message.EmailMessage`, policy SMTP: CRLF line ends), then one queue record per
recipient (each has its own content), routed like ingest's by the provider rollup.

The fields the API writes itself: From, To, Subject, Date, Message-ID (at the sender's
domain), MIME-Version, X-Mailsluice-Id (how a feedback-loop complaint finds the message),
List-Id when the request names a list; then the request's extra fields. text and html make a
multipart/alternative; attachments a multipart/mixed around it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from functools import cached_property

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

    @cached_property
    def scopes(self) -> tuple[Scope, ...]:
        """The suppression scopes every message of the request falls in."""
        return scopes_for(tenant=self.tenant, sender=self.sender.email, list_id=self.list_id)

    @property
    def sender_domain(self) -> str:
        return self.sender.email.rpartition("@")[2]


def _mailbox(box: Mailbox) -> Address:
    return Address(display_name=box.name, addr_spec=box.email)


def compose(letter: Letter, to: Mailbox, parts: Rendered, *, queue_id: str, now: float) -> bytes:
    """The message as queued (CRLF line ends)."""
    msg = EmailMessage(policy=SMTP)
    msg["From"] = _mailbox(letter.sender)
    msg["To"] = _mailbox(to)
    msg["Subject"] = parts.subject
    msg["Date"] = format_datetime(datetime.fromtimestamp(now, UTC))
    msg["Message-ID"] = f"<{queue_id}@{letter.sender_domain}>"
    msg[ID_HEADER] = id_field_value(queue_id, letter.pool)
    if letter.list_id:
        msg["List-Id"] = f"<{letter.list_id}>"
    for name, value in letter.headers:
        msg[name] = value
    if parts.text is not None:
        msg.set_content(parts.text)
        if parts.html is not None:
            msg.add_alternative(parts.html, subtype="html")
    else:
        msg.set_content(parts.html or "", subtype="html")
    for part in letter.attachments:
        maintype, _, subtype = part.content_type.partition("/")
        msg.add_attachment(part.data, maintype, subtype, filename=part.filename)
    return msg.as_bytes(policy=SMTP)


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
