"""DKIM-Signature header fields for a message (RFC 6376, RFC 8463), relaxed/relaxed.

dkimpy parses the header section, canonicalises the header fields and folds the signature; the
signature itself is made by `cryptography` (OpenSSL), since dkimpy's pure-Python RSA costs
~25 times more. The relaxed body canonicalisation is ours, on the whole body at once instead
of dkimpy's line by line (20 times faster on a 20 KB body; the tests hold it equal to
dkimpy's). The body hash is computed once for all the keys a message is signed with.

Signed header fields are those of `SIGNED_HEADERS` the message has, as often as it has them;
From, To and Subject are signed once more than they occur ("oversigning"), so nobody can add
another one to a signed message without breaking the signature.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Sequence

import dkim
from dkim.canonicalization import (
    CanonicalizationPolicy,
    correct_empty_body,
    strip_trailing_lines,
)

from mailsluice.dkim.keys import SigningKey

CANONICALIZATION = b"relaxed/relaxed"
SIGNED_HEADERS: tuple[bytes, ...] = (
    b"from",
    b"to",
    b"cc",
    b"reply-to",
    b"subject",
    b"date",
    b"message-id",
    b"in-reply-to",
    b"references",
    b"mime-version",
    b"content-type",
    b"content-transfer-encoding",
    b"content-disposition",
    b"list-id",
    b"list-unsubscribe",
    b"list-unsubscribe-post",
    b"feedback-id",
)
OVERSIGNED: frozenset[bytes] = frozenset({b"from", b"to", b"subject"})
HEADER_NAME = b"DKIM-Signature"
# dkimpy's trick: a long b= placeholder folds b= onto its own line, so putting the real value
# in afterwards does not move the folds of the tags before it.
_B_PLACEHOLDER = b"0" * 60
_POLICY = CanonicalizationPolicy.from_c_value(CANONICALIZATION)
_SPACES = re.compile(rb"  +")


class SigningError(ValueError):
    """The message cannot be signed (its header section does not parse)."""


def header_list(headers: Sequence[Sequence[bytes]]) -> tuple[bytes, ...]:
    """The h= list for a message with these header fields (see the module docstring)."""
    counts: dict[bytes, int] = {}
    for name, _value in headers:
        lower = name.lower()
        counts[lower] = counts.get(lower, 0) + 1
    chosen: list[bytes] = []
    for name in SIGNED_HEADERS:
        times = counts.get(name, 0) + (1 if name in OVERSIGNED else 0)
        chosen += [name] * times
    return tuple(chosen)


def signature_fields(message: bytes, keys: Sequence[SigningKey], timestamp: int) -> bytes:
    """DKIM-Signature header fields, one per key, CRLF-terminated, to put on top of `message`
    (which must already have CRLF line ends: the bytes as they will be sent)."""
    headers, body = split_message(message)
    include = header_list(headers)
    canonical = _POLICY.canonicalize_headers(headers)
    # what every key signs before its own DKIM-Signature field: built once per message
    signed = b"".join(
        name + b":" + value for name, value in dkim.select_headers(canonical, include)
    )
    body_hash = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest())
    return b"".join(_one_signature(key, signed, include, body_hash, timestamp) for key in keys)


def split_message(message: bytes) -> tuple[list[list[bytes]], bytes]:
    """(header fields, body) as dkimpy's rfc822_parse gives them, without splitting the body into
    lines (which costs more than signing)."""
    if message.startswith(b"\r\n"):
        return [], message[2:]
    end = message.find(b"\r\n\r\n")
    head, body = (message, b"") if end < 0 else (message[: end + 2], message[end + 4 :])
    try:
        headers, _ = dkim.rfc822_parse(head)
    except (dkim.MessageFormatError, IndexError) as exc:  # IndexError: leading continuation
        raise SigningError(str(exc) or "the header section starts with a continuation") from None
    return headers, body


def relaxed_body(body: bytes) -> bytes:
    """The relaxed body canonicalisation (RFC 6376 §3.4.4): runs of WSP become one SP, WSP at
    line ends goes, empty lines at the end go, a non-empty body ends with CRLF."""
    if b"\t" in body:
        body = body.replace(b"\t", b" ")
    if b"  " in body:  # indented HTML: one pass, where repeated replaces took three
        body = _SPACES.sub(b" ", body)
    body = body.replace(b" \r\n", b"\r\n")
    canonical: bytes = correct_empty_body(strip_trailing_lines(body))
    return canonical


def _one_signature(
    key: SigningKey,
    prefix: bytes,
    include: tuple[bytes, ...],
    body_hash: bytes,
    timestamp: int,
) -> bytes:
    fields = [
        (b"v", b"1"),
        (b"a", key.signature_algorithm),
        (b"c", CANONICALIZATION),
        (b"d", key.domain.encode("ascii")),
        (b"s", key.selector.encode("ascii")),
        (b"t", str(timestamp).encode("ascii")),
        (b"h", b" : ".join(include)),
        (b"bh", body_hash),
        (b"b", _B_PLACEHOLDER),
    ]
    value = dkim.fold(_joined(fields), namelen=len(HEADER_NAME), linesep=b"\r\n")
    value = dkim.RE_BTAG.sub(b"\\1", value)
    # the field itself is signed last, canonical, with an empty b= and no trailing CRLF
    ((name, canonical),) = _POLICY.canonicalize_headers([(HEADER_NAME, b" " + value)])
    fields[-1] = (b"b", base64.b64encode(key.sign(prefix + name + b":" + canonical.rstrip())))
    signed: bytes = dkim.fold(_joined(fields) + b"\r\n", namelen=len(HEADER_NAME), linesep=b"\r\n")
    return HEADER_NAME + b": " + signed


def _joined(fields: list[tuple[bytes, bytes]]) -> bytes:
    return b"; ".join(b"=".join(field) for field in fields)
