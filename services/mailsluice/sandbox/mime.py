"""What the sandbox shows of a captured message: its text and HTML parts, headers, attachments."""

from __future__ import annotations

import re
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesParser
from typing import Any

_PARSER = BytesParser(policy=policy.default)


def parse(raw: bytes, *, headers_only: bool = False) -> EmailMessage:
    parsed = _PARSER.parsebytes(raw, headersonly=headers_only)
    assert isinstance(parsed, EmailMessage)
    return parsed


def _content(part: Message | None) -> str:
    if not isinstance(part, EmailMessage):
        return ""
    try:
        return str(part.get_content())
    except (LookupError, ValueError, AssertionError):
        # An unknown charset or a broken transfer encoding: show what decodes.
        payload = part.get_payload(decode=True)
        return payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""


@dataclass(frozen=True)
class Parts:
    text: str
    html: str
    attachments: list[dict[str, Any]]
    inline: list[dict[str, Any]]


def parts(msg: EmailMessage) -> Parts:
    text = _content(msg.get_body(preferencelist=("plain",)))
    html = _content(msg.get_body(preferencelist=("html",)))
    attachments: list[dict[str, Any]] = []
    inline: list[dict[str, Any]] = []
    for index, part in enumerate(msg.walk()):
        if part.is_multipart() or part.get_content_disposition() not in {"attachment", "inline"}:
            continue
        if part.get_content_disposition() == "inline" and not part.get_filename():
            continue  # an inline body part, not a file
        payload = part.get_payload(decode=True)
        entry = {
            "PartID": str(index),
            "FileName": part.get_filename() or "",
            "ContentType": part.get_content_type(),
            "ContentID": str(part.get("Content-ID", "")).strip("<>"),
            "Size": len(payload) if isinstance(payload, bytes) else 0,
        }
        (inline if part.get_content_disposition() == "inline" else attachments).append(entry)
    return Parts(text, html, attachments, inline)


def headers(msg: EmailMessage) -> dict[str, list[str]]:
    """GET /api/v1/message/<ID>/headers: every header's values, names sorted (as Mailpit)."""
    out: dict[str, list[str]] = {}
    for name, value in msg.raw_items():
        out.setdefault(name, []).append(re.sub(r"\r?\n(?=[ \t])", "", str(value)))  # unfolded
    return dict(sorted(out.items()))


def snippet(text: str, html: str, limit: int = 250) -> str:
    """Mailpit's Snippet: the start of the text, whitespace folded."""
    source = text
    if not source and html:
        source = _strip_tags(html)
    return " ".join(source.split())[:limit]


def _strip_tags(html: str) -> str:
    from html.parser import HTMLParser

    chunks: list[str] = []

    class _Text(HTMLParser):
        skip = 0

        def handle_starttag(self, tag: str, attrs: Any) -> None:
            self.skip += tag in {"style", "script", "head"}

        def handle_endtag(self, tag: str) -> None:
            self.skip -= tag in {"style", "script", "head"} and self.skip > 0

        def handle_data(self, data: str) -> None:
            if not self.skip:
                chunks.append(data)

    _Text().feed(html)
    return " ".join(chunks)
