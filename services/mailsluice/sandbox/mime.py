"""What the sandbox shows of a captured message: its text and HTML parts, headers, attachments."""

from __future__ import annotations

import base64
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


def _file_parts(msg: EmailMessage) -> list[tuple[int, EmailMessage]]:
    """Parts that are files, numbered as msg.walk() numbers them: attachments, and inline
    parts with a name or a Content-ID (images of multipart/related often carry no disposition)."""
    body = {id(msg.get_body(preferencelist=(kind,))) for kind in ("plain", "html")}
    found: list[tuple[int, EmailMessage]] = []
    for index, part in enumerate(msg.walk()):
        if part.is_multipart() or id(part) in body or not isinstance(part, EmailMessage):
            continue
        disposition = part.get_content_disposition()
        if disposition == "attachment" or part.get_filename() or part.get("Content-ID"):
            found.append((index, part))
    return found


def _content_id(part: Message) -> str:
    return str(part.get("Content-ID", "")).strip().strip("<>")


def bodies(msg: EmailMessage) -> tuple[str, str]:
    """The text and HTML bodies (what a view shows, without decoding the files)."""
    text = _content(msg.get_body(preferencelist=("plain",)))
    html = _content(msg.get_body(preferencelist=("html",)))
    return text, html


def parts(msg: EmailMessage) -> Parts:
    text, html = bodies(msg)
    attachments: list[dict[str, Any]] = []
    inline: list[dict[str, Any]] = []
    for index, part in _file_parts(msg):
        payload = part.get_payload(decode=True)
        entry = {
            "PartID": str(index),
            "FileName": part.get_filename() or "",
            "ContentType": part.get_content_type(),
            "ContentID": _content_id(part),
            "Size": len(payload) if isinstance(payload, bytes) else 0,
        }
        (attachments if part.get_content_disposition() == "attachment" else inline).append(entry)
    return Parts(text, html, attachments, inline)


def part(msg: EmailMessage, part_id: str) -> tuple[str, str, bytes] | None:
    """GET /api/v1/message/<ID>/part/<PartID>: a file part's type, name and decoded bytes."""
    for index, found in _file_parts(msg):
        if str(index) == part_id:
            payload = found.get_payload(decode=True)
            data = payload if isinstance(payload, bytes) else b""
            return found.get_content_type(), found.get_filename() or "", data
    return None


# Inline images larger than this stay as broken cid: links rather than bloat the view.
INLINE_IMAGE_LIMIT = 2 * 1024 * 1024
_CID = re.compile(r"""cid:([^"'\s)>]+)""", re.IGNORECASE)


def inline_images(html: str, msg: EmailMessage) -> str:
    """The HTML with each cid: reference to an image part replaced by a data: URI, so the
    view shows inline images while its CSP still refuses every load from elsewhere."""
    images: dict[str, str] = {}
    for _, found in _file_parts(msg):
        payload = found.get_payload(decode=True)
        cid = _content_id(found)
        if (
            cid
            and found.get_content_maintype() == "image"
            and isinstance(payload, bytes)
            and len(payload) <= INLINE_IMAGE_LIMIT
        ):
            encoded = base64.b64encode(payload).decode("ascii")
            images[cid.lower()] = f"data:{found.get_content_type()};base64,{encoded}"

    def swap(match: re.Match[str]) -> str:
        return images.get(match.group(1).lower(), match.group(0))

    return _CID.sub(swap, html) if images else html


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
