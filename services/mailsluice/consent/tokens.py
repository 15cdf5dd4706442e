"""Unsubscribe tokens: who unsubscribes from what, signed so nobody can make one up.

A token carries its claim in the clear (the recipient, the tenant or the sender domain, the
list, the scope label to suppress in) and an HMAC-SHA256 over all of it under a named key,
truncated to 96 bits. Without the key no token can be forged, altered or enumerated: every
field is under the MAC, and guessing a MAC takes 2^96 tries against a service that answers
404 to each. It is signed, not encrypted: it shows the recipient's address to whoever holds
the link, who holds the message that names it anyway.

Encoded in lower-case base32 without padding: URL-safe, and safe in an address's local part
whatever case a mail system gives it back in. Keys rotate: a ring holds several, mints with
the active one, and verifies with any it still holds; a retired key is dropped from the ring.
Pure: no I/O (the key files are read by `settings`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from mailsluice.contracts.events import Event, EventType
from mailsluice.contracts.suppressions import Scope, ScopeKind, scopes_for

VERSION = "1"
MAC_BYTES = 12
MIN_KEY_BYTES = 16
KEY_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,15}$")
# The mailto address of a token: unsubscribe+TOKEN@<configured domain>.
MAILTO_PREFIX = "unsubscribe+"
_SEP = "\x1f"  # no address, name or label holds a control character
_FIELDS = 7
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


def claim_for(
    recipient: str, *, tenant: str, list_id: str, sender: str, preference: Preference
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
        self._keys = dict(keys)
        self.active = active

    def __bool__(self) -> bool:
        return bool(self._keys)

    def mint(self, claim: Claim) -> str:
        fields = (VERSION, self.active, claim.recipient, claim.tenant, claim.list_id)
        parts = (*fields, claim.domain, claim.scope)
        if any(_SEP in p for p in parts) or not self._keys:
            raise ValueError("cannot mint: no key, or a field holds a control character")
        payload = _SEP.join(parts).encode()
        raw = payload + _mac(self._keys[self.active], payload)
        return base64.b32encode(raw).decode().rstrip("=").lower()

    def verify(self, token: str) -> Claim:
        """The claim of a genuine token; TokenError for anything else."""
        payload, mac = _split(token)
        try:
            parts = payload.decode().split(_SEP)
        except UnicodeDecodeError:
            raise TokenError("malformed", "not UTF-8") from None
        if len(parts) != _FIELDS or parts[0] != VERSION:
            raise TokenError("malformed", "unknown layout")
        key = self._keys.get(parts[1])
        if key is None:
            raise TokenError("unknown_key", f"key {parts[1][:20]!r}")
        if not hmac.compare_digest(mac, _mac(key, payload)):
            raise TokenError("forged", "signature does not match")
        _, _, recipient, tenant, list_id, domain, scope = parts
        try:
            Scope.parse(scope)
        except ValueError:
            raise TokenError("malformed", "bad scope") from None
        return Claim(recipient, scope, tenant, list_id, domain)


def _mac(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, payload, hashlib.sha256).digest()[:MAC_BYTES]


def _split(token: str) -> tuple[bytes, bytes]:
    text = token.strip().lower()
    if not _TOKEN.match(text):
        raise TokenError("malformed", "not a token")
    try:
        raw = base64.b32decode(text.upper() + "=" * (-len(text) % 8))
    except (binascii.Error, ValueError):
        raise TokenError("malformed", "not base32") from None
    if len(raw) <= MAC_BYTES:
        raise TokenError("malformed", "too short")
    return raw[:-MAC_BYTES], raw[-MAC_BYTES:]


def mailto_token(address: str, domain: str) -> str | None:
    """The token of `unsubscribe+TOKEN@domain` (any case); None for any other address."""
    local, at, host = address.rpartition("@")
    if not at or not domain or host.lower() != domain.lower():
        return None
    if not local.lower().startswith(MAILTO_PREFIX):
        return None
    return local[len(MAILTO_PREFIX) :]


def unsubscribe_event(claim: Claim, how: Literal["one-click", "mailto"], now: float) -> Event:
    """The `unsubscribe` event of a verified claim; the stream processors suppress on it."""
    return Event(
        type=EventType.UNSUBSCRIBE,
        ts=now,
        sender=claim.domain,
        recipient=claim.recipient,
        reason=how,
        scope=claim.scope,
    )
