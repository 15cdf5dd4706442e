"""A message rewritten for tracking: click redirects and an open pixel in its HTML parts. Pure.

Only the bodies of the `text/html` parts change (and, where the new body needs it, that part's
Content-Transfer-Encoding field): every other byte, other parts, boundaries and headers, is
spliced through as it was, so the message keeps its structure and can be DKIM-signed afterwards.
Each HTML body is decoded with its transfer encoding and charset, edited by offsets, and encoded
back the same way. Whatever cannot be done safely leaves the whole message unchanged, with a
reason the caller can count; links are numbered across the message from 0.

Every recipient's copy differs from the others by its tokens only, so the work is split:
`plan(message)` walks the MIME tree, decodes the HTML and finds its links and the pixel's place
once per message; `Plan.apply` makes one copy, splicing the tokens in and encoding back.
`rewrite` is both at once.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from html import escape

from mailsluice.tracking.encoding import (
    decode_charset,
    decode_transfer,
    encode_transfer,
    per_line,
    quoted_printable,
)
from mailsluice.tracking.links import find
from mailsluice.tracking.mime import CRLF, Leaf, Malformed, leaves

_ENCODING_FIELD = re.compile(
    rb"^content-transfer-encoding[ \t]*:.*?\r\n(?:[ \t].*?\r\n)*", re.IGNORECASE | re.MULTILINE
)
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
    (none when `open_url` is None: clicks only): `plan(message).apply(...)`.

    Links to anything but http(s), links marked `data-ms-notrack` and links `keep` accepts (the
    unsubscribe links; every link, for opens only) stay as they are.
    """
    return plan(message).apply(click_url, open_url, keep)


@dataclass(frozen=True)
class _Slot:
    """A place in an HTML text where a copy differs: a link (its target and its href value as
    written, quotes included) or, with no target, the pixel."""

    target: str | None
    original: str = ""


@dataclass(frozen=True)
class _Run:
    """Text with slots in it: pieces[0] slots[0] pieces[1] ... pieces[-1]."""

    pieces: tuple[str, ...]
    slots: tuple[_Slot, ...]

    def text(self, links: _Links, pixel: str) -> str:
        text = [self.pieces[0]]
        for slot, piece in zip(self.slots, self.pieces[1:], strict=True):
            if slot.target is None:
                text.append(pixel)
            elif links.keep(slot.target):
                text.append(slot.original)
            else:
                text.append(f'"{escape(links.redirect(slot.target), quote=True)}"')
            text.append(piece)
        return "".join(text)


@dataclass(frozen=True)
class _Part:
    """One HTML part, decoded once, and how each copy of it is encoded back."""

    leaf: Leaf
    # The body in order: text made per copy and, where its lines can be encoded apart
    # (encoding.per_line), the quoted-printable lines without a slot, encoded once.
    runs: tuple[_Run | bytes, ...]
    charset: str
    # Whatever followed the base64 lines before the next boundary (a line break or nothing).
    tail: bytes
    # The Content-Transfer-Encoding field to write when the body has to become QP.
    to_qp: _Edit

    def apply(self, links: _Links, pixel: str) -> list[_Edit]:
        leaf = self.leaf
        first = self.runs[0]
        if len(self.runs) == 1 and isinstance(first, _Run):
            payload = self._encode(first, links, pixel)
            body, switched = encode_transfer(payload, leaf.transfer_encoding, self.tail)
        else:
            body, switched = b"".join(self._qp(run, links, pixel) for run in self.runs), False
        edits = [_Edit(leaf.body_start, leaf.body_end, body)]
        return [*edits, self.to_qp] if switched else edits

    def _encode(self, run: _Run, links: _Links, pixel: str) -> bytes:
        return run.text(links, pixel).encode(self.charset, errors="xmlcharrefreplace")

    def _qp(self, run: _Run | bytes, links: _Links, pixel: str) -> bytes:
        return run if isinstance(run, bytes) else quoted_printable(self._encode(run, links, pixel))


@dataclass(frozen=True)
class Plan:
    """What every copy of one message shares: its HTML parts read, their links and the pixel's
    place found (or why the message stays as it is). `apply` makes one copy."""

    message: bytes
    parts: tuple[_Part, ...] = ()
    unchanged: Unchanged | None = None

    def apply(
        self, click_url: ClickUrl, open_url: OpenUrl | None, keep: Keep | None = None
    ) -> Rewritten:
        """One copy, as `rewrite` describes: only the tokens are made here."""
        if self.unchanged is not None:
            return Rewritten(self.message, (), pixel=False, unchanged=self.unchanged)
        pixel = _pixel(open_url()) if open_url is not None else ""
        links = _Links(click_url, keep or _keep_none, [])
        edits = [edit for part in self.parts for edit in part.apply(links, pixel)]
        return Rewritten(_splice(self.message, edits), tuple(links.targets), pixel=bool(pixel))


def plan(message: bytes) -> Plan:
    """The message's HTML parts decoded and their links found, once for all its copies."""
    try:
        parts = leaves(message)
    except Malformed:
        return Plan(message, unchanged=Unchanged.MALFORMED)
    html = [part for part in parts if part.content_type == "text/html" and not part.attachment]
    if not html:
        return Plan(message, unchanged=Unchanged.NO_HTML)
    planned: list[_Part] = []
    for leaf in html:
        done = _plan_part(message, leaf)
        if isinstance(done, Unchanged):
            return Plan(message, unchanged=done)
        planned.append(done)
    return Plan(message, tuple(planned))


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


def _plan_part(message: bytes, leaf: Leaf) -> _Part | Unchanged:
    encoded = message[leaf.body_start : leaf.body_end]
    payload = decode_transfer(encoded, leaf.transfer_encoding)
    if payload is None:
        return Unchanged.TRANSFER_ENCODING
    charset = leaf.charset or "us-ascii"
    text = decode_charset(payload, charset)
    if text is None:
        return Unchanged.CHARSET
    whole = _cut(text)
    runs: tuple[_Run | bytes, ...] = (whole,)
    if per_line(payload, leaf.transfer_encoding, charset):
        runs = tuple(
            quoted_printable(run.encode(charset)) if isinstance(run, str) else run
            for run in _by_line(whole)
        )
    tail = encoded[len(encoded.rstrip(CRLF)) :]
    return _Part(leaf, runs, charset, tail, _encoding_field(message, leaf))


def _cut(text: str) -> _Run:
    """The text cut at every link a copy may redirect and at the pixel's place."""
    found = find(text, _keep_none)
    spans = [
        (link.start, link.end, _Slot(link.target, text[link.start : link.end]))
        for link in found.links
    ]
    spans.append((found.pixel_at, found.pixel_at, _Slot(None)))
    spans.sort(key=lambda span: span[0])
    pieces: list[str] = []
    at = 0
    for start, end, _slot in spans:
        pieces.append(text[at:start])
        at = end
    pieces.append(text[at:])
    return _Run(tuple(pieces), tuple(slot for _s, _e, slot in spans))


def _by_line(whole: _Run) -> list[_Run | str]:
    """The text cut at line breaks: runs of the lines that hold slots, and the text of the
    lines between them, in order (a line break ends the line it is on)."""
    out: list[_Run | str] = []
    pieces: list[str] = []  # of the run open on the current line, if any
    slots: list[_Slot] = []
    head = ""  # the current line so far, while no run is open on it
    for i, piece in enumerate(whole.pieces):
        rest = piece
        if slots:
            end = piece.find("\n") + 1 or len(piece)
            pieces.append(piece[:end])
            rest = piece[end:]
            if piece[:end].endswith("\n"):
                out.append(_Run(tuple(pieces), tuple(slots)))
                pieces, slots = [], []
        if not slots:
            text = head + rest
            end = text.rfind("\n") + 1
            out += [text[:end]] if end else []
            head = text[end:]
        if i < len(whole.slots):
            pieces = pieces or [head]
            head = ""
            slots.append(whole.slots[i])
    out.append(_Run(tuple(pieces), tuple(slots)) if slots else head)
    return _merged([run for run in out if run != ""])


def _merged(runs: list[_Run | str]) -> list[_Run | str]:
    """Runs next to each other as one (one call to encode them, not one per line)."""
    out: list[_Run | str] = []
    for run in runs:
        last = out[-1] if out else ""
        if isinstance(run, _Run) and isinstance(last, _Run):
            joined = (*last.pieces[:-1], last.pieces[-1] + run.pieces[0], *run.pieces[1:])
            out[-1] = _Run(joined, last.slots + run.slots)
        else:
            out.append(run)
    return out


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
