"""An HTML part's body between its bytes and its text: transfer encoding and charset. Pure.

A body is decoded once per message and encoded back once per recipient's copy, where only the
lines holding a token differ: quoted-printable resets at every line break, so in a charset that
encodes character by character the lines without a token can be encoded once (`per_line`).
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re

CRLF = b"\r\n"
# RFC 5322 §2.1.1: lines of at most 998 octets without the CRLF.
MAX_LINE = 998
QUOTED_PRINTABLE = "quoted-printable"
_IDENTITY = ("7bit", "8bit", "binary")
_BARE_LF = re.compile(rb"(?<!\r)\n")
# Charsets with neither state nor byte order mark, where "\n" is the byte 0x0A: encoded in
# pieces, the text gives the bytes it gives whole.
_STATELESS = ("utf-8", "ascii", "iso8859-", "cp125", "koi8-")


def decode_transfer(encoded: bytes, encoding: str) -> bytes | None:
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


def decode_charset(payload: bytes, charset: str) -> str | None:
    """The text, when the charset decodes the bytes strictly and encodes them back the same."""
    try:
        text = payload.decode(charset)
        if text.encode(charset) == payload:
            return text
    except (LookupError, UnicodeError):
        pass
    return None


def per_line(payload: bytes, encoding: str, charset: str) -> bool:
    """Whether the lines of this body can be encoded apart and joined: quoted-printable, in a
    stateless charset, and no carriage return but in CRLF (b2a_qp keeps a lone one, and ends
    lines as the first line ends, so one would change the bytes next to a line break)."""
    if encoding != QUOTED_PRINTABLE or payload.count(b"\r") != payload.count(CRLF):
        return False
    return codecs.lookup(charset).name.startswith(_STATELESS)


def encode_transfer(payload: bytes, encoding: str, tail: bytes) -> tuple[bytes, bool]:
    """The new body in the part's transfer encoding, and whether it had to become QP; `tail`
    is what followed the old base64 lines before the next boundary (a line break, or none)."""
    if encoding == "base64":
        lines = base64.encodebytes(payload).replace(b"\n", CRLF).rstrip(CRLF)
        return lines + tail, False
    if encoding == QUOTED_PRINTABLE or not _fits(payload, encoding):
        return quoted_printable(payload), encoding != QUOTED_PRINTABLE
    return payload, False


def _fits(payload: bytes, encoding: str) -> bool:
    """Whether the bytes can be sent as they are under a 7bit, 8bit or binary label."""
    if encoding == "binary":
        return True
    if b"\0" in payload or (encoding == "7bit" and not payload.isascii()):
        return False
    return all(len(line.rstrip(b"\r")) <= MAX_LINE for line in payload.split(b"\n"))


def quoted_printable(payload: bytes) -> bytes:
    """QP in lines of at most 76, line breaks kept as breaks, every line ending in CRLF."""
    encoded = binascii.b2a_qp(payload, quotetabs=False, istext=True, header=False)
    # b2a_qp ends its soft breaks as the payload's first line does, bare LF when it has none.
    # The two plain cases are scans in C; the regular expression costs more than b2a_qp.
    if encoded.count(b"\n") == encoded.count(CRLF):
        return encoded
    if b"\r" not in encoded:
        return encoded.replace(b"\n", CRLF)
    return _BARE_LF.sub(CRLF, encoded)
