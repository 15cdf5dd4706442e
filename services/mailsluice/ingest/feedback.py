"""Feedback-loop (FBL) complaint reports: ARF (RFC 5965) bytes -> complaints.

Mailbox providers (Yahoo CFL, Microsoft JMRP, AOL, Comcast, Fastmail...) send a report when a
recipient marks a message as spam: a multipart/report; report-type=feedback-report whose second
part (message/feedback-report) carries Feedback-Type, Original-Rcpt-To, Original-Mail-From,
Arrival-Date..., and whose third part is the original message (message/rfc822) or its header
(text/rfc822-headers).

parse_report() is a plain function of the bytes (stdlib `email`, compat32 policy: lenient, values
stay strings). Only the top-level report is read: a report is one message per RFC 5965 §2.

Who complained, in order of trust: each Original-Rcpt-To field; else the lone recipient our
Received header names (`for <addr>`); else the To: of the original when it names one address.
Providers that redact addresses (JMRP does) leave none of these usable -> "no_recipient".

Which message: the X-Mailsluice-Id header ingest adds (`<queue id>; pool=<pool>`), else the queue
id in our Received header (`(Mailsluice) with ESMTP id <queue id>`, no pool).
"""

from __future__ import annotations

import email
import re
from dataclasses import dataclass, replace
from email.message import Message
from email.parser import HeaderParser
from email.policy import compat32
from email.utils import getaddresses, parsedate_to_datetime

from mailsluice.contracts.campaigns import LabelError, check_campaign
from mailsluice.contracts.envelope import ID_HEADER, id_field_params
from mailsluice.contracts.events import Event, EventType
from mailsluice.contracts.suppressions import Scope
from mailsluice.ingest.addresses import AddressError, check_mailbox
from mailsluice.ingest.settings import POOL_NAME
from mailsluice.metrics.ingest import FEEDBACK_REJECT_REASONS
from mailsluice.policy.rollup import Rollup

# Feedback types that are complaints (RFC 5965 §7.3). `not-spam` (RFC 6650) is the opposite and
# `auth-failure` (RFC 6591) a DMARC/SPF failure report: neither may become a suppression.
COMPLAINT_TYPES = ("abuse", "fraud", "virus", "other")

# Why a message to a feedback address is refused (closed set: a metric label).
REJECT_REASONS = FEEDBACK_REJECT_REASONS

_QUEUE_ID = r"[0-9A-HJKMNP-TV-Z]{26}"  # contracts.new_queue_id(): a ULID
_ID_VALUE = re.compile(rf"^\s*({_QUEUE_ID})\s*(?:;\s*pool\s*=\s*([^;\s]+))?", re.I)
_OUR_RECEIVED = re.compile(
    rf"\(Mailsluice\)\s+with\s+\S+\s+id\s+({_QUEUE_ID})(?:\s+for\s+<([^>\s]+)>)?", re.I
)
# Local parts providers put in place of a redacted address (AOL: "redacted"; others mask).
_REDACTED = re.compile(r"^(redacted|masked|[x*]+)$", re.I)
_MAX_FIELD = 255


class FeedbackError(ValueError):
    """The message is not a usable complaint report; `reason` is one of REJECT_REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Complaint:
    recipient: str  # the complaining address (domain lower-cased)
    feedback_type: str  # one of COMPLAINT_TYPES
    queue_id: str = ""  # of the original message, "" when the report does not tell
    pool: str = ""
    sender: str = ""  # Original-Mail-From ("" for the null path or when absent)
    arrival: float | None = None  # Arrival-Date, epoch seconds
    reporter: str = ""  # Reporting-MTA
    user_agent: str = ""
    tenant: str = ""  # the original's, from its X-Mailsluice-Id
    campaign: str = ""


@dataclass(frozen=True)
class Origin:
    """What the original message's header says about itself."""

    queue_id: str = ""
    pool: str = ""
    envelope_rcpt: str = ""  # from our Received header's `for <...>`
    to: str = ""  # the To: address when there is exactly one
    tenant: str = ""
    campaign: str = ""


def parse_report(raw: bytes) -> list[Complaint]:
    """The complaints of one ARF report (one per Original-Rcpt-To), or FeedbackError."""
    message = email.message_from_bytes(raw, policy=compat32)
    if message.get_content_type() != "multipart/report":
        raise FeedbackError("not_report", f"content type {message.get_content_type()}")
    if str(message.get_param("report-type", "")).lower() != "feedback-report":
        raise FeedbackError("not_report", "report-type is not feedback-report")
    payload = message.get_payload()
    parts = [p for p in payload if isinstance(p, Message)] if isinstance(payload, list) else []
    if not parts:
        raise FeedbackError("malformed", "multipart/report without parts")
    fields = _report_fields(parts)
    feedback_type = _clean(fields.get("feedback-type", "")).lower()
    if not feedback_type:
        raise FeedbackError("malformed", "no Feedback-Type")
    if feedback_type not in COMPLAINT_TYPES:
        raise FeedbackError("not_complaint", f"feedback type {feedback_type[:40]}")
    origin = _origin(_original_header(parts))
    recipients = _usable(_rcpt_values(fields)) or _usable([origin.envelope_rcpt, origin.to])[:1]
    if not recipients:
        raise FeedbackError("no_recipient", "no usable Original-Rcpt-To or original recipient")
    sender = _usable([_strip_addr(fields.get("original-mail-from", ""))])
    common = Complaint(
        recipient="",
        feedback_type=feedback_type,
        queue_id=origin.queue_id,
        pool=origin.pool,
        tenant=origin.tenant,
        campaign=origin.campaign,
        sender=sender[0] if sender else "",
        arrival=_date(fields.get("arrival-date", "")),
        reporter=_clean(fields.get("reporting-mta", "")).removeprefix("dns;").strip(),
        user_agent=_clean(fields.get("user-agent", "")),
    )
    return [replace(common, recipient=rcpt) for rcpt in recipients]


def _report_fields(parts: list[Message]) -> dict[str, str]:
    """The message/feedback-report part's fields (names lower-cased; Original-Rcpt-To joined
    with newlines, since it may repeat)."""
    for part in parts:
        if part.get_content_type() != "message/feedback-report":
            continue
        block = _as_header(part)
        fields: dict[str, str] = {}
        for name, value in block.items():
            key = name.lower()
            if key == "original-rcpt-to" and key in fields:
                fields[key] += "\n" + str(value)
            else:
                fields.setdefault(key, str(value))
        return fields
    raise FeedbackError("malformed", "no message/feedback-report part")


def _original_header(parts: list[Message]) -> Message | None:
    for part in parts:
        ctype = part.get_content_type()
        if ctype in ("message/rfc822", "text/rfc822-headers"):
            return _as_header(part)
    return None


def _as_header(part: Message) -> Message:
    """A message/* part's embedded block, or a text part's payload, parsed as a header."""
    payload = part.get_payload()
    if isinstance(payload, list):
        first = payload[0] if payload else None
        return first if isinstance(first, Message) else Message()
    data = part.get_payload(decode=True)
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(payload)
    return HeaderParser(policy=compat32).parsestr(text.lstrip("\r\n"), headersonly=True)


def _origin(header: Message | None) -> Origin:
    if header is None:
        return Origin()
    queue_id, pool, envelope_rcpt, labels = "", "", "", ("", "")
    stamp = _ID_VALUE.match(str(header.get(ID_HEADER, "")))
    if stamp is not None:
        queue_id = stamp.group(1).upper()
        pool = (stamp.group(2) or "").lower()
        pool = pool if POOL_NAME.match(pool) else ""
        labels = _labels(id_field_params(str(header.get(ID_HEADER, ""))))
    for received in header.get_all("Received") or ():
        ours = _OUR_RECEIVED.search(str(received))
        if ours is not None:
            queue_id = queue_id or ours.group(1).upper()
            envelope_rcpt = ours.group(2) or ""
            break
    to = [addr for _, addr in getaddresses([str(v) for v in header.get_all("To") or ()]) if addr]
    one_to = to[0] if len(to) == 1 else ""
    return Origin(queue_id, pool, envelope_rcpt, one_to, *labels)


def _labels(params: dict[str, str]) -> tuple[str, str]:
    """(tenant, campaign) a report's quoted X-Mailsluice-Id names, each dropped when it is no
    name of its kind (anyone can write a report)."""
    tenant, campaign = params.get("tenant", ""), params.get("campaign", "")
    try:
        Scope.parse(f"tenant:{tenant}")
    except ValueError:
        tenant = ""
    try:
        check_campaign(campaign)
    except LabelError:
        campaign = ""
    return tenant, campaign


def _rcpt_values(fields: dict[str, str]) -> list[str]:
    return [_strip_addr(v) for v in fields.get("original-rcpt-to", "").split("\n")]


def _strip_addr(value: str) -> str:
    """`<a@b>`, `rfc822;a@b` or `a@b` -> a@b (providers differ)."""
    text = _clean(value)
    if text.lower().startswith("rfc822;"):
        text = text[7:].strip()
    return text.removeprefix("<").removesuffix(">").strip()


def _usable(candidates: list[str]) -> list[str]:
    """Valid addresses among the candidates, once each, in order; redacted or broken ones go."""
    found: list[str] = []
    for candidate in candidates:
        try:
            address = check_mailbox(candidate)
        except AddressError:
            continue
        if _REDACTED.match(address.partition("@")[0]):
            continue
        if address.lower() not in (f.lower() for f in found):
            found.append(address)
    return found


def _clean(value: str) -> str:
    return " ".join(str(value).split())[:_MAX_FIELD]


def _date(value: str) -> float | None:
    try:
        return parsedate_to_datetime(_clean(value)).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def complaint_events(
    complaints: list[Complaint], *, rollup: Rollup, served_pools: frozenset[str], now: float
) -> list[Event]:
    """One `complaint` event per complaint, stamped `now`. The routing key comes from the
    recipient's domain alone (no DNS at complaint time); a pool this ingest does not serve is
    left out, since anyone can write the header of a report."""
    return [
        Event(
            type=EventType.COMPLAINT,
            ts=now,
            queue_id=c.queue_id,
            pool=c.pool if c.pool in served_pools else "",
            tenant=c.tenant,
            campaign=c.campaign,
            sender=c.sender,
            recipient=c.recipient,
            routing_key=rollup.routing_key(c.recipient),
            reason=c.feedback_type,
            remote=c.reporter,
            text=c.user_agent,
        )
        for c in complaints
    ]
