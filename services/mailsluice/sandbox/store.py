"""Captured messages in memory, and their summaries in the shape of Mailpit's API v1."""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import getaddresses
from typing import Any

from mailsluice.sandbox import mime
from mailsluice.sandbox.search import Searchable, matcher


@dataclass(frozen=True)
class Captured:
    id: str
    mail_from: str
    rcpt_tos: tuple[str, ...]
    raw: bytes
    created: float  # epoch seconds
    searchable: Searchable = field(repr=False)
    snippet: str = ""
    attachments: int = 0


@dataclass
class Stats:
    """Mailpit's RuntimeStats, counted since the sandbox started."""

    started: float = field(default_factory=time.time)
    accepted: int = 0
    accepted_size: int = 0
    rejected: int = 0
    deleted: int = 0


def _addresses(values: list[str]) -> list[dict[str, str]]:
    return [{"Name": name, "Address": addr} for name, addr in getaddresses(values) if addr]


def _header_values(msg: EmailMessage, name: str) -> list[str]:
    return [str(v) for v in msg.get_all(name, [])]


def _flat(addresses: list[dict[str, str]]) -> str:
    return " ".join(f"{a['Name']} <{a['Address']}>" for a in addresses)


def capture(
    item_id: str, mail_from: str, rcpt_tos: list[str], raw: bytes, created: float
) -> Captured:
    """A message as the store keeps it, parsed once for search and its snippet."""
    msg = mime.parse(raw)
    body = mime.parts(msg)
    searchable = Searchable(
        sender=f"{_flat(_addresses(_header_values(msg, 'From')))} {mail_from}".lower(),
        recipients=" ".join(
            [_flat(_addresses(_header_values(msg, h))) for h in ("To", "Cc", "Bcc")] + rcpt_tos
        ).lower(),
        subject=str(msg.get("Subject", "")).lower(),
        message_id=str(msg.get("Message-ID", "")).lower(),
        text=(body.text or body.html).lower(),
    )
    snippet = mime.snippet(body.text, body.html)
    return Captured(
        item_id,
        mail_from,
        tuple(rcpt_tos),
        raw,
        created,
        searchable,
        snippet,
        len(body.attachments),
    )


def summary(item: Captured, read: bool = False) -> dict[str, Any]:
    """One entry of GET /api/v1/messages, as Mailpit reports it."""
    msg = mime.parse(item.raw, headers_only=True)
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
        "Read": read,
        "From": senders[0] if senders else {"Name": "", "Address": ""},
        "To": to,
        "Cc": cc,
        "Bcc": bcc,
        "ReplyTo": _addresses(_header_values(msg, "Reply-To")),
        "Subject": str(msg.get("Subject", "")),
        "Created": _iso(item.created),
        "Tags": [],
        "Size": len(item.raw),
        "Attachments": item.attachments,
        "Snippet": item.snippet,
    }


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


def detail(item: Captured, read: bool = True) -> dict[str, Any]:
    """GET /api/v1/message/<ID>: the summary plus the bodies, attachments and envelope."""
    out = summary(item, read)
    msg = mime.parse(item.raw)
    body = mime.parts(msg)
    date = msg.get("Date")
    try:
        when = _iso(date.datetime.timestamp()) if date is not None else out["Created"]
    except (AttributeError, ValueError, TypeError):
        when = out["Created"]
    out.update(
        {
            "Text": body.text,
            "HTML": body.html,
            "Date": when,
            "Attachments": body.attachments,
            "Inline": body.inline,
            "ReturnPath": item.mail_from,
            "Envelope": list(item.rcpt_tos),
        }
    )
    return out


class MessageStore:
    """The last `limit` captured messages, newest last; safe to use from several threads."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._items: OrderedDict[str, Captured] = OrderedDict()
        self._read: set[str] = set()
        self._lock = threading.Lock()
        self.stats = Stats()

    def add(self, mail_from: str, rcpt_tos: list[str], raw: bytes, created: float) -> Captured:
        item = capture(secrets.token_urlsafe(12), mail_from, rcpt_tos, raw, created)
        with self._lock:
            self._items[item.id] = item
            self.stats.accepted += 1
            self.stats.accepted_size += len(raw)
            while len(self._items) > self._limit:
                gone, _ = self._items.popitem(last=False)
                self._read.discard(gone)
        return item

    def get(self, item_id: str) -> Captured | None:
        with self._lock:
            if item_id == "latest":  # Mailpit's alias of the newest message
                return next(reversed(self._items.values()), None)
            return self._items.get(item_id)

    def is_read(self, item_id: str) -> bool:
        with self._lock:
            return item_id in self._read

    def mark_read(self, ids: list[str] | None, read: bool = True) -> None:
        with self._lock:
            chosen = list(self._items) if ids is None else [i for i in ids if i in self._items]
            if read:
                self._read.update(chosen)
            else:
                self._read.difference_update(chosen)

    def page(
        self, start: int, limit: int, where: Callable[[Captured, bool], bool] | None = None
    ) -> tuple[int, list[Captured]]:
        """Count of matching messages and one page of them, newest first."""
        with self._lock:
            newest_first = list(reversed(self._items.values()))
            read = set(self._read)
        if where is not None:
            newest_first = [m for m in newest_first if where(m, m.id in read)]
        return len(newest_first), newest_first[start : start + limit]

    def search(self, query: str) -> Callable[[Captured, bool], bool]:
        match = matcher(query)
        return lambda item, read: match(item.searchable, read)

    def delete(self, ids: list[str] | None = None) -> list[str]:
        """Delete these messages (None: all); the IDs that were there."""
        with self._lock:
            gone = list(self._items) if ids is None else [i for i in ids if i in self._items]
            for item_id in gone:
                del self._items[item_id]
                self._read.discard(item_id)
            self.stats.deleted += len(gone)
            return gone

    def unread(self) -> int:
        with self._lock:
            return len(self._items) - len(self._read)

    def size(self) -> int:
        with self._lock:
            return sum(len(m.raw) for m in self._items.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def all(self) -> list[Captured]:
        with self._lock:
            return list(self._items.values())
