"""Captured messages in memory, and their summaries in the shape of Mailpit's API v1."""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import getaddresses
from typing import Any

_HEADERS_ONLY = BytesParser(policy=policy.default)


@dataclass(frozen=True)
class Captured:
    id: str
    mail_from: str
    rcpt_tos: tuple[str, ...]
    raw: bytes
    created: float  # epoch seconds


def _addresses(values: list[str]) -> list[dict[str, str]]:
    return [{"Name": name, "Address": addr} for name, addr in getaddresses(values) if addr]


def _header_values(msg: EmailMessage, name: str) -> list[str]:
    return [str(v) for v in msg.get_all(name, [])]


def _parse_headers(raw: bytes) -> EmailMessage:
    parsed = _HEADERS_ONLY.parsebytes(raw, headersonly=True)
    assert isinstance(parsed, EmailMessage)
    return parsed


def summary(item: Captured) -> dict[str, Any]:
    """One entry of GET /api/v1/messages, as Mailpit reports it."""
    msg = _parse_headers(item.raw)
    to = _addresses(_header_values(msg, "To"))
    cc = _addresses(_header_values(msg, "Cc"))
    in_headers = {a["Address"].lower() for a in (*to, *cc)}
    # Mailpit's Bcc: envelope recipients that no To/Cc header names.
    bcc = [{"Name": "", "Address": r} for r in item.rcpt_tos if r.lower() not in in_headers]
    senders = _addresses(_header_values(msg, "From"))
    if not senders and item.mail_from:
        senders = [{"Name": "", "Address": item.mail_from}]
    return {
        "ID": item.id,
        "MessageID": str(msg.get("Message-ID", "")).strip().strip("<>"),
        "Read": False,
        "From": senders[0] if senders else {"Name": "", "Address": ""},
        "To": to,
        "Cc": cc,
        "Bcc": bcc,
        "ReplyTo": _addresses(_header_values(msg, "Reply-To")),
        "Subject": str(msg.get("Subject", "")),
        "Created": datetime.fromtimestamp(item.created, UTC).isoformat().replace("+00:00", "Z"),
        "Tags": [],
        "Size": len(item.raw),
        "Attachments": 0,
        "Snippet": "",
    }


def detail(item: Captured) -> dict[str, Any]:
    """GET /api/v1/message/<ID>: the summary plus the plain-text body."""
    out = summary(item)
    msg = BytesParser(policy=policy.default).parsebytes(item.raw)
    text = ""
    if isinstance(msg, EmailMessage):
        body = msg.get_body(preferencelist=("plain",))
        if body is not None and isinstance(body, EmailMessage):
            try:
                text = str(body.get_content())
            except (LookupError, ValueError):
                text = ""
    out.update({"Text": text, "ReturnPath": item.mail_from, "Envelope": list(item.rcpt_tos)})
    return out


class MessageStore:
    """The last `limit` captured messages, newest last; safe to use from several threads."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._items: OrderedDict[str, Captured] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, mail_from: str, rcpt_tos: list[str], raw: bytes, created: float) -> Captured:
        item = Captured(secrets.token_urlsafe(12), mail_from, tuple(rcpt_tos), raw, created)
        with self._lock:
            self._items[item.id] = item
            while len(self._items) > self._limit:
                self._items.popitem(last=False)
        return item

    def get(self, item_id: str) -> Captured | None:
        with self._lock:
            return self._items.get(item_id)

    def page(self, start: int, limit: int) -> tuple[int, list[Captured]]:
        """Total count and one page, newest first."""
        with self._lock:
            newest_first = list(reversed(self._items.values()))
        return len(newest_first), newest_first[start : start + limit]

    def delete(self, ids: list[str] | None = None) -> int:
        with self._lock:
            if ids is None:
                count = len(self._items)
                self._items.clear()
                return count
            return sum(self._items.pop(i, None) is not None for i in ids)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def all(self) -> list[Captured]:
        with self._lock:
            return list(self._items.values())
