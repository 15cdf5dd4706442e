"""Where a message's leaf parts lie, as byte offsets into the message. Pure.

The message is walked on its bytes (CRLF line ends) so that a caller can splice one part's body
and leave every other byte, boundaries and headers included, as it was. The standard library
parses each header block only. A delimiter line's leading CRLF belongs to the delimiter
(RFC 2046 §5.1.1), so a body span ends before it. Anything this walk cannot follow raises
`Malformed`: the caller then leaves the message alone rather than guess.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32

CRLF = b"\r\n"
# Deeper nesting than this is not mail anyone writes by hand; it bounds the recursion.
MAX_DEPTH = 20
_PARSER = BytesHeaderParser(policy=compat32)
_COMMENT = re.compile(r"\([^()]*\)")


class Malformed(ValueError):
    """The MIME structure cannot be followed on the bytes."""


@dataclass(frozen=True)
class Leaf:
    """One non-multipart part: its header block and body as offsets into the message."""

    header_start: int
    # The end of the last header line, its CRLF included (the blank line follows).
    header_end: int
    body_start: int
    body_end: int
    content_type: str
    charset: str | None
    transfer_encoding: str
    attachment: bool


def leaves(message: bytes) -> list[Leaf]:
    """Every leaf part of the message in order; raises `Malformed`."""
    return list(_entity(message, 0, len(message), 0))


def _entity(data: bytes, start: int, end: int, depth: int) -> Iterator[Leaf]:
    if depth > MAX_DEPTH:
        raise Malformed("nested too deep")
    header_end, body_start = _split(data, start, end, top=depth == 0)
    headers = _PARSER.parsebytes(data[start:header_end])
    if headers.get_content_maintype() != "multipart":
        yield _leaf(headers, start, header_end, body_start, end)
        return
    boundary = headers.get_boundary()
    if not boundary:
        raise Malformed("multipart without a boundary")
    for part_start, part_end in _parts(data, body_start, end, boundary.encode("ascii", "replace")):
        yield from _entity(data, part_start, part_end, depth + 1)


def _split(data: bytes, start: int, end: int, *, top: bool) -> tuple[int, int]:
    """(header_end, body_start) of the entity in data[start:end]."""
    if data.startswith(CRLF, start, end):
        if top:
            raise Malformed("message without a header")
        return start, start + 2  # a body part may have no header at all
    blank = data.find(CRLF + CRLF, start, end)
    if blank < 0:
        if top:
            raise Malformed("no blank line after the header")
        return end, end
    return blank + 2, blank + 4


def _parts(data: bytes, start: int, end: int, boundary: bytes) -> Iterator[tuple[int, int]]:
    """The spans of the body parts between the delimiter lines of data[start:end]."""
    dash = b"--" + boundary
    part_start: int | None = None
    at = start if data.startswith(dash, start, end) else _next_delimiter(data, start, end, dash)
    while at >= 0:
        line_end, closing = _delimiter_line(data, at + len(dash), end)
        if line_end >= 0:
            if part_start is not None:
                # The CRLF in front of this delimiter is the delimiter's own.
                yield part_start, max(part_start, at - 2)
            if closing:
                return
            part_start = line_end
        at = _next_delimiter(data, at + len(dash), end, dash)
    raise Malformed("no closing boundary")


def _next_delimiter(data: bytes, start: int, end: int, dash: bytes) -> int:
    found = data.find(CRLF + dash, start, end)
    return found + 2 if found >= 0 else -1


def _delimiter_line(data: bytes, after: int, end: int) -> tuple[int, bool]:
    """(offset past the line, closing) when a delimiter line ends here, else (-1, False)."""
    closing = data.startswith(b"--", after, end)
    at = after + 2 if closing else after
    while at < end and data[at] in b" \t":  # transport padding
        at += 1
    if at == end:
        return (end, closing) if closing else (-1, False)
    if data.startswith(CRLF, at, end):
        return at + 2, closing
    # "--b" followed by other text is a longer boundary or content, not this delimiter.
    return -1, False


def _leaf(headers: Message, start: int, header_end: int, body_start: int, end: int) -> Leaf:
    charset = headers.get_content_charset()
    # RFC 2045 allows comments around the mechanism: "7bit (comment)".
    mechanism = _COMMENT.sub(" ", str(headers.get("content-transfer-encoding", ""))).split()
    return Leaf(
        header_start=start,
        header_end=header_end,
        body_start=body_start,
        body_end=end,
        content_type=headers.get_content_type(),
        charset=charset,
        transfer_encoding=mechanism[0].lower() if mechanism else "7bit",
        attachment=headers.get_content_disposition() == "attachment",
    )
