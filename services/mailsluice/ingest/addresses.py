"""Strict parsing of MAIL FROM / RCPT TO paths (RFC 5321 §4.1.2, minus what relays abuse).

Accepted: `<local@domain>` (or without brackets) with a dot-atom local part and a fully
qualified host name. Refused as relay tricks: source routes (`@a,@b:user@c`), quoted local
parts, the percent hack (`user%host@relay`), bang paths (`host!user`) and address literals
(`user@[1.2.3.4]`) — each is valid old syntax that a downstream MTA may re-route.
Refused as bad syntax: no or several `@`, bad characters, over-long parts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

MAX_LOCAL = 64
# An unsubscribe address (consent/tokens.py) carries a signed token: its local part may be
# as long as a path allows (RFC 5321 §4.5.3.1 lets a server take longer local parts).
LONG_LOCAL_PREFIX = "unsubscribe+"
MAX_DOMAIN = 253
MAX_PATH = 254

# RFC 5322 atext without "%" and "!", which only ever serve routing tricks.
_ATOM = r"[A-Za-z0-9#$&'*+\-/=?^_`{|}~]+"
_LOCAL = re.compile(rf"^{_ATOM}(\.{_ATOM})*$")
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN = re.compile(rf"^(?:{_LABEL}\.)+(?:[a-z](?:[a-z0-9-]{{0,61}}[a-z0-9])?)$")

ErrorKind = Literal["syntax", "relay_trick"]

# A command's path in its everyday form: `<dot-atom@dot-atom>`, then nothing or parameters
# after a space (RFC 5322 atext, as the email package's parser reads it).
_RFC_ATOM = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+"
_SIMPLE_PATH = re.compile(
    rf"[ \t]*<({_RFC_ATOM}(?:\.{_RFC_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>(?=$|[ \t])"
)


class AddressError(ValueError):
    def __init__(self, kind: ErrorKind, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True)
class Path:
    address: str  # "" for the null reverse-path <>
    params: str  # the ESMTP parameters after the path, unparsed

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2]


def parse_path(arg: str, *, allow_null: bool = False) -> Path:
    """Parse the argument after `FROM:` / `TO:`; raise AddressError saying why not."""
    text = arg.strip()
    if text.startswith("<"):
        end = text.find(">")
        if end < 0:
            raise AddressError("syntax", "unterminated <")
        inner, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith(" "):
            raise AddressError("syntax", "junk after >")
    else:
        inner, _, rest = text.partition(" ")
    if not inner:
        if allow_null and text.startswith("<"):
            return Path("", rest.strip())
        raise AddressError("syntax", "empty address")
    return Path(check_mailbox(inner), rest.strip())


def check_mailbox(mailbox: str) -> str:
    """Validate local@domain; return it with the domain lower-cased."""
    if not mailbox.isascii() or any(c.isspace() or ord(c) < 32 for c in mailbox):
        raise AddressError("syntax", "invalid characters")
    if len(mailbox) > MAX_PATH:
        raise AddressError("syntax", "address too long")
    if mailbox.startswith("@") or (":" in mailbox and "@" in mailbox.partition(":")[0]):
        raise AddressError("relay_trick", "source route")
    if '"' in mailbox or "\\" in mailbox:
        raise AddressError("relay_trick", "quoted local part")
    if "[" in mailbox or "]" in mailbox:
        raise AddressError("relay_trick", "address literal")
    if "%" in mailbox:
        raise AddressError("relay_trick", "percent hack")
    if "!" in mailbox:
        raise AddressError("relay_trick", "bang path")
    count = mailbox.count("@")
    if count == 0:
        raise AddressError("syntax", "no domain")
    if count > 1:
        raise AddressError("syntax", "more than one @")
    local, _, domain = mailbox.partition("@")
    domain = domain.lower()
    long_ok = local.lower().startswith(LONG_LOCAL_PREFIX)
    if not local or (len(local) > MAX_LOCAL and not long_ok) or not _LOCAL.match(local):
        raise AddressError("syntax", "bad local part")
    if len(domain) > MAX_DOMAIN or not _DOMAIN.match(domain):
        raise AddressError("syntax", "bad domain")
    return f"{local}@{domain}"


def simple_path(arg: str) -> tuple[str, str] | None:
    """(address, parameters) of a MAIL FROM / RCPT TO argument in its everyday form, as
    aiosmtpd's parse (the email package's header parser) reads it; None for any other form,
    which that parse then handles. Nine in ten of ingest's parsing time went to the general
    parser for these."""
    match = _SIMPLE_PATH.match(arg)
    if match is None:
        return None
    rest = arg[match.end() :].lstrip(" \t")
    if rest.startswith("("):  # a comment: the general parser's to read
        return None
    return match.group(1), rest
