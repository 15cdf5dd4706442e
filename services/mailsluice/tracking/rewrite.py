"""A message rewritten for tracking: click redirects and an open pixel in its HTML parts. Pure.

Only the bodies of the `text/html` parts change (and, where the new body needs it, that part's
Content-Transfer-Encoding field): every other byte, other parts, boundaries and headers, is
spliced through as it was, so the message keeps its structure and can be DKIM-signed afterwards.
Each HTML body is decoded with its transfer encoding and charset, edited by offsets, and encoded
back the same way. Whatever cannot be done safely leaves the whole message unchanged, with a
reason the caller can count; links are numbered across the message from 0.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from html import escape

from mailsluice.tracking.links import find
from mailsluice.tracking.mime import CRLF, Leaf, Malformed, leaves

# RFC 5322 §2.1.1: lines of at most 998 octets without the CRLF.
MAX_LINE = 998
QUOTED_PRINTABLE = "quoted-printable"
_IDENTITY = ("7bit", "8bit", "binary")
_ENCODING_FIELD = re.compile(
    rb"^content-transfer-encoding[ \t]*:.*?\r\n(?:[ \t].*?\r\n)*", re.IGNORECASE | re.MULTILINE
)
_BARE_LF = re.compile(rb"(?<!\r)\n")
_NEW_ENCODING_FIELD = b"Content-Transfer-Encoding: quoted-printable\r\n"

ClickUrl = Callable[[int, str], str]
OpenUrl = Callable[[], str]
Keep = Callable[[str], bool]


class Unchanged(StrEnum):
    """Why a message was left as it came (a closed set, for a metric label)."""

    MALFORMED = "malformed"
    NO_HTML = "no_html"
    # The charset is unknown, or the part's bytes do not decode (and encode back) with it.
    CHARSET = "charset"
    # An unknown Content-Transfer-Encoding, or a base64 body that does not decode.
    TRANSFER_ENCODING = "transfer_encoding"


@dataclass(frozen=True)
class Rewritten:
    message: bytes
    # The targets of the rewritten links, in the order of the indexes given to click_url.
    links: tuple[str, ...]
    pixel: bool
    unchanged: Unchanged | None = None


@dataclass(frozen=True)
class _Edit:
    start: int
    end: int
    data: bytes


def rewrite(
    message: bytes, click_url: ClickUrl, open_url: OpenUrl | None, keep: Keep | None = None
) -> Rewritten:
    """The message with its HTML links redirected through click_url and an open pixel added
    (none when `open_url` is None: clicks only).

    Links to anything but http(s), links marked `data-ms-notrack` and links `keep` accepts (the
    unsubscribe links; every link, for opens only) stay as they are.
    """
    try:
        parts = leaves(message)
    except Malformed:
        return Rewritten(message, (), pixel=False, unchanged=Unchanged.MALFORMED)
    html = [part for part in parts if part.content_type == "text/html" and not part.attachment]
    if not html:
        return Rewritten(message, (), pixel=False, unchanged=Unchanged.NO_HTML)
    links: list[str] = []
    pixel = _pixel(open_url()) if open_url is not None else ""
    edits: list[_Edit] = []
    for part in html:
        done = _rewrite_part(message, part, _Links(click_url, keep or _keep_none, links), pixel)
        if isinstance(done, Unchanged):
            return Rewritten(message, (), pixel=False, unchanged=done)
        edits.extend(done)
    return Rewritten(_splice(message, edits), tuple(links), pixel=bool(pixel))


@dataclass(frozen=True)
class _Links:
    click_url: ClickUrl
    keep: Keep
    targets: list[str]

    def redirect(self, target: str) -> str:
        url = self.click_url(len(self.targets), target)
        self.targets.append(target)
        return url


def _keep_none(_target: str) -> bool:
    return False


def _pixel(url: str) -> str:
    return f'<img src="{escape(url, quote=True)}" width="1" height="1" alt="" style="display:none">'


def _rewrite_part(message: bytes, part: Leaf, links: _Links, pixel: str) -> list[_Edit] | Unchanged:
    encoded = message[part.body_start : part.body_end]
    payload = _decode_transfer(encoded, part.transfer_encoding)
    if payload is None:
        return Unchanged.TRANSFER_ENCODING
    charset = part.charset or "us-ascii"
    text = _decode_charset(payload, charset)
    if text is None:
        return Unchanged.CHARSET
    new_payload = _edit_html(text, links, pixel).encode(charset, errors="xmlcharrefreplace")
    body, switched = _encode_transfer(new_payload, part.transfer_encoding, encoded)
    edits = [_Edit(part.body_start, part.body_end, body)]
    if switched:
        edits.append(_encoding_field(message, part))
    return edits


def _edit_html(text: str, links: _Links, pixel: str) -> str:
    found = find(text, links.keep)
    pieces: list[str] = []
    at = 0
    for link in found.links:
        pieces += [text[at : link.start], f'"{escape(links.redirect(link.target), quote=True)}"']
        at = link.end
    pieces += [text[at : found.pixel_at], pixel, text[found.pixel_at :]]
    return "".join(pieces)


def _decode_transfer(encoded: bytes, encoding: str) -> bytes | None:
    if encoding in _IDENTITY:
        return encoded
    if encoding == QUOTED_PRINTABLE:
        return binascii.a2b_qp(encoded)
    if encoding == "base64":
        try:
            return binascii.a2b_base64(encoded)
        except binascii.Error:
            return None
    return None


def _decode_charset(payload: bytes, charset: str) -> str | None:
    """The text, when the charset decodes the bytes strictly and encodes them back the same."""
    try:
        text = payload.decode(charset)
        if text.encode(charset) == payload:
            return text
    except (LookupError, UnicodeError):
        pass
    return None


def _encode_transfer(payload: bytes, encoding: str, original: bytes) -> tuple[bytes, bool]:
    """The new body in the part's transfer encoding, and whether it had to become QP."""
    if encoding == "base64":
        lines = base64.encodebytes(payload).replace(b"\n", CRLF).rstrip(CRLF)
        # Keep the line break (or its absence) in front of the next boundary as it was.
        return lines + original[len(original.rstrip(CRLF)) :], False
    if encoding == QUOTED_PRINTABLE or not _fits(payload, encoding):
        return _quoted_printable(payload), encoding != QUOTED_PRINTABLE
    return payload, False


def _fits(payload: bytes, encoding: str) -> bool:
    """Whether the bytes can be sent as they are under a 7bit, 8bit or binary label."""
    if encoding == "binary":
        return True
    if b"\0" in payload or (encoding == "7bit" and not payload.isascii()):
        return False
    return all(len(line.rstrip(b"\r")) <= MAX_LINE for line in payload.split(b"\n"))


def _quoted_printable(payload: bytes) -> bytes:
    """QP in lines of at most 76, line breaks kept as breaks, every line ending in CRLF."""
    encoded = binascii.b2a_qp(payload, quotetabs=False, istext=True, header=False)
    # b2a_qp ends its soft breaks as the payload's first line does, bare LF when it has none.
    return _BARE_LF.sub(CRLF, encoded)


def _encoding_field(message: bytes, part: Leaf) -> _Edit:
    """Replace the part's Content-Transfer-Encoding field (or add one) to say quoted-printable."""
    found = _ENCODING_FIELD.search(message, part.header_start, part.header_end)
    if found is None:
        return _Edit(part.header_end, part.header_end, _NEW_ENCODING_FIELD)
    return _Edit(found.start(), found.end(), _NEW_ENCODING_FIELD)


def _splice(message: bytes, edits: list[_Edit]) -> bytes:
    pieces: list[bytes] = []
    at = 0
    for edit in sorted(edits, key=lambda e: (e.start, e.end)):
        pieces += [message[at : edit.start], edit.data]
        at = edit.end
    pieces.append(message[at:])
    return b"".join(pieces)
