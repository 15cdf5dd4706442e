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
whatever case a mail system gives it back in. The sealing and key rotation are `sealing`'s.
Pure: no I/O (the key files are read by `settings`).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from mailsluice.contracts.events import Event, EventType
from mailsluice.contracts.suppressions import Scope, ScopeKind, scopes_for
from mailsluice.sealing import Sealer, TokenError

VERSION = b"\x02"
_PURPOSE = b"mailsluice unsubscribe token"
# The mailto address of a token: unsubscribe+TOKEN@<configured domain>.
MAILTO_PREFIX = "unsubscribe+"
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

__all__ = ["Claim", "KeyRing", "TokenError", "claim_for", "mailto_token", "unsubscribe_event"]


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
        self._sealer = Sealer(keys, active, purpose=_PURPOSE, version=VERSION)
        self.active = self._sealer.active

    def __bool__(self) -> bool:
        return bool(self._sealer)

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
        return base64.b32encode(self._sealer.seal(parts)).decode().rstrip("=").lower()

    def verify(self, token: str) -> Claim:
        """The claim of a genuine token; TokenError for anything else."""
        text = token.strip().lower()
        if not _TOKEN.match(text):
            raise TokenError("malformed", "not a token")
        try:
            raw = base64.b32decode(text.upper() + "=" * (-len(text) % 8))
        except (binascii.Error, ValueError):
            raise TokenError("malformed", "not base32") from None
        parts = self._sealer.open(raw)
        if len(parts) not in _FIELDS:
            raise TokenError("malformed", "unknown layout")
        recipient, tenant, list_id, domain, scope, *rest = parts
        try:
            Scope.parse(scope)
        except ValueError:
            raise TokenError("malformed", "bad scope") from None
        return Claim(recipient, scope, tenant, list_id, domain, rest[0] if rest else "")


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
