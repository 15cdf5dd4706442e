"""The List-Unsubscribe header fields of one recipient's copy (RFC 2369, RFC 8058).

`List-Unsubscribe: <https://HOST/u/TOKEN>,\r\n <mailto:unsubscribe+TOKEN@DOMAIN>` and
`List-Unsubscribe-Post: List-Unsubscribe=One-Click`, prepended to the message. A message that
already has a List-Unsubscribe field keeps it untouched: the sender runs its own. Pure.
"""

from __future__ import annotations

import re

from mailsluice.consent.tokens import MAILTO_PREFIX

POST_FIELD = b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
# RFC 5321 §4.5.3.1.3: a path is at most 256 octets with its brackets.
MAX_PATH = 254
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_HAS_FIELD = re.compile(rb"(?:^|\n)list-unsubscribe[ \t]*:", re.IGNORECASE)


def link(url: str, token: str) -> str:
    return f"{url}/u/{token}"


def mailto(domain: str, token: str) -> str:
    """The mailto address of a token; "" when it would be too long for a path."""
    address = f"{MAILTO_PREFIX}{token}@{domain}"
    return address if domain and len(address) <= MAX_PATH else ""


def has_list_unsubscribe(message: bytes) -> bool:
    """Whether the message's header section has a List-Unsubscribe field already."""
    end = _HEADER_END.search(message)
    header = message[: end.start() + 1] if end is not None else message
    return _HAS_FIELD.search(header) is not None


def fields(url: str, domain: str, token: str) -> bytes:
    """Both header fields, folded before the mailto URI (CRLF line ends)."""
    uris = [f"<{link(url, token)}>"]
    address = mailto(domain, token)
    if address:
        uris.append(f"<mailto:{address}>")
    return ("List-Unsubscribe: " + ",\r\n ".join(uris) + "\r\n").encode() + POST_FIELD


def with_fields(message: bytes, url: str, domain: str, token: str) -> bytes:
    return fields(url, domain, token) + message
