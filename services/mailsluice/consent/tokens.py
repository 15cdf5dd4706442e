"""Unsubscribe tokens: who unsubscribes from what, sealed so nobody can make one up or read it.

A token carries its claim (the recipient, the tenant or the sender domain, the list, the scope
label to suppress in, and the campaign when the message has one, so the unsubscribe counts in
its campaign's stats) encrypted and authenticated with AES-SIV (RFC 5297) under a named key;
the key id goes in the clear, bound to the rest as associated data. Without the key no token
can be forged, altered or enumerated (the 128-bit synthetic IV is a MAC over everything), and
the link shows nothing: not the recipient's address, which a URL leaks to proxies, logs and
link scanners. SIV is deterministic, so the same claim gives the same token, which tells
nothing the claim does not, and needs no nonce (a shorter token in an address's local part).

Encoded in lower-case base32 without padding: URL-safe, and safe in an address's local part
whatever case a mail system gives it back in. Keys rotate: a ring holds several, mints with
the active one, and verifies with any it still holds; a retired key is dropped from the ring.
Pure: no I/O (the key files are read by `settings`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from mailsluice.contracts.events import Event, EventType
from mailsluice.contracts.suppressions import Scope, ScopeKind, scopes_for

VERSION = b"\x02"
SIV_BYTES = 16  # the synthetic IV that authenticates the token
MIN_KEY_BYTES = 16
KEY_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,15}$")
# The mailto address of a token: unsubscribe+TOKEN@<configured domain>.
MAILTO_PREFIX = "unsubscribe+"
_SEP = "\x1f"  # no address, name or label holds a control character
_KID_END = b"\x00"
_FIELDS = (5, 6)  # the campaign is left out when there is none: such tokens are as before
_TOKEN = re.compile(r"^[a-z2-7]{16,600}$")

# How widely an unsubscribe suppresses, narrowest first: "list" falls back to the tenant,
# then the sender domain when the message names no list or tenant.
Preference = Literal["list", "tenant", "domain", "global"]
_ORDER: dict[str, tuple[ScopeKind, ...]] = {
    "list": (ScopeKind.LIST, ScopeKind.TENANT, ScopeKind.DOMAIN),
    "tenant": (ScopeKind.TENANT, ScopeKind.DOMAIN),
    "domain": (ScopeKind.DOMAIN,),
    "global": (),
}

Failure = Literal["malformed", "unknown_key", "forged"]


class TokenError(ValueError):
    """A token that does not verify; `reason` says why (a metric label)."""

    def __init__(self, reason: Failure, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: Failure = reason


@dataclass(frozen=True)
class Claim:
    """What a token says: `recipient` unsubscribes in `scope` (a suppression scope's label)
    from the mail of `tenant` (or of `domain`, the sender domain, when there is no tenant)
    and its list `list_id`."""

    recipient: str
    scope: str = "global"
    tenant: str = ""
    list_id: str = ""
    domain: str = ""
    campaign: str = ""


def claim_for(
    recipient: str,
    *,
    tenant: str,
    list_id: str,
    sender: str,
    preference: Preference,
    campaign: str = "",
) -> Claim:
    """The claim of one recipient of a message: the narrowest scope `preference` allows that
    the message names (global when it names none)."""
    found = {s.kind: s for s in scopes_for(tenant=tenant, sender=sender, list_id=list_id)}
    scope = next((found[k] for k in _ORDER[preference] if k in found), Scope())
    domain = found[ScopeKind.DOMAIN].domain if ScopeKind.DOMAIN in found else ""
    named_tenant = found[ScopeKind.TENANT].tenant if ScopeKind.TENANT in found else ""
    listed = found[ScopeKind.LIST].list_id if ScopeKind.LIST in found else ""
    return Claim(
        recipient=recipient,
        scope=scope.label,
        tenant=named_tenant,
        list_id=listed,
        domain="" if named_tenant else domain,
        campaign=campaign,
    )


class KeyRing:
    """The keys tokens are signed with, by key id; `active` mints, every key verifies."""

    def __init__(self, keys: Mapping[str, bytes], active: str = "") -> None:
        for kid, secret in keys.items():
            if not KEY_ID.match(kid):
                raise ValueError(f"bad key id {kid!r} (a-z, 0-9, '-', at most 16)")
            if len(secret) < MIN_KEY_BYTES:
                raise ValueError(f"key {kid!r} is shorter than {MIN_KEY_BYTES} bytes")
        if not active and len(keys) == 1:
            active = next(iter(keys))
        if keys and active not in keys:
            raise ValueError(f"the active key {active!r} is not among the keys {sorted(keys)}")
        # derived once: a worker mints a token for every recipient of bulk mail
        self._ciphers = {kid: _cipher(secret) for kid, secret in keys.items()}
        self.active = active

    def __bool__(self) -> bool:
        return bool(self._ciphers)

    def mint(self, claim: Claim) -> str:
        parts: tuple[str, ...] = (
            claim.recipient,
            claim.tenant,
            claim.list_id,
            claim.domain,
            claim.scope,
        )
        if claim.campaign:
            parts += (claim.campaign,)
        if any(_SEP in p for p in parts) or not self._ciphers:
            raise ValueError("cannot mint: no key, or a field holds a control character")
        head = VERSION + self.active.encode() + _KID_END
        sealed = self._ciphers[self.active].encrypt(_SEP.join(parts).encode(), [head])
        return base64.b32encode(head + sealed).decode().rstrip("=").lower()

    def verify(self, token: str) -> Claim:
        """The claim of a genuine token; TokenError for anything else."""
        head, kid, sealed = _split(token)
        cipher = self._ciphers.get(kid)
        if cipher is None:
            raise TokenError("unknown_key", f"key {kid[:20]!r}")
        try:
            parts = cipher.decrypt(sealed, [head]).decode().split(_SEP)
        except InvalidTag:
            raise TokenError("forged", "does not authenticate") from None
        except UnicodeDecodeError:
            raise TokenError("malformed", "not UTF-8") from None
        if len(parts) not in _FIELDS:
            raise TokenError("malformed", "unknown layout")
        recipient, tenant, list_id, domain, scope, *rest = parts
        try:
            Scope.parse(scope)
        except ValueError:
            raise TokenError("malformed", "bad scope") from None
        return Claim(recipient, scope, tenant, list_id, domain, rest[0] if rest else "")


def _cipher(secret: bytes) -> AESSIV:
    # AES-256-SIV wants 64 key bytes; the secrets are random (MIN_KEY_BYTES at least), so a
    # hash with a purpose label is key derivation enough
    return AESSIV(hashlib.sha512(b"mailsluice unsubscribe token\x00" + secret).digest())


def _split(token: str) -> tuple[bytes, str, bytes]:
    """(head, key id, sealed claim) of a token's bytes."""
    text = token.strip().lower()
    if not _TOKEN.match(text):
        raise TokenError("malformed", "not a token")
    try:
        raw = base64.b32decode(text.upper() + "=" * (-len(text) % 8))
    except (binascii.Error, ValueError):
        raise TokenError("malformed", "not base32") from None
    end = raw.find(_KID_END)
    if not raw.startswith(VERSION) or end < 0:
        raise TokenError("malformed", "unknown layout")
    kid = raw[len(VERSION) : end].decode("ascii", errors="replace")
    if not KEY_ID.match(kid) or len(raw) - end - 1 <= SIV_BYTES:
        raise TokenError("malformed", "unknown layout")
    return raw[: end + 1], kid, raw[end + 1 :]


def mailto_token(address: str, domain: str) -> str | None:
    """The token of `unsubscribe+TOKEN@domain` (any case); None for any other address."""
    local, at, host = address.rpartition("@")
    if not at or not domain or host.lower() != domain.lower():
        return None
    if not local.lower().startswith(MAILTO_PREFIX):
        return None
    return local[len(MAILTO_PREFIX) :]


def unsubscribe_event(claim: Claim, how: Literal["one-click", "mailto"], now: float) -> Event:
    """The `unsubscribe` event of a verified claim; the stream processors suppress on it. Its
    tenant is the one the scope names (tenant:X, list:X/Y), so the tenant's webhooks get it,
    and its campaign the message's, so the campaign's stats count it."""
    scope = Scope.parse(claim.scope)
    return Event(
        type=EventType.UNSUBSCRIBE,
        ts=now,
        sender=claim.domain,
        recipient=claim.recipient,
        reason=how,
        scope=claim.scope,
        tenant=scope.tenant if scope.kind in (ScopeKind.TENANT, ScopeKind.LIST) else "",
        campaign=claim.campaign,
    )
