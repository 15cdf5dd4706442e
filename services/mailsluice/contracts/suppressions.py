"""Records of the compacted topic mailsluice.suppressions, and the scopes a suppression has.

Key: the scope's label and the address lower-cased, `"<label>|<address>"`, except for the global
scope, whose key is the address alone (as every record before scopes). A null value (tombstone)
removes the entry. An address cannot hold a label (":" is not atext), so a key parses one way.

Scopes, widest first: `global` (nobody sends to the address), `tenant:<tenant>` (that tenant
does not), `domain:<sender domain>` (mail from that domain does not), `list:<tenant>/<list>`
(that tenant's list or campaign does not). A recipient is suppressed for a message when any of
the scopes the message falls in (`scopes_for`) holds an entry for it."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from mailsluice.contracts.versioning import load_versioned

VERSION = 1

# a tenant or list name: what an API tenant, an AUTH user or a List-Id may be named
_NAME = r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,199}"
_DOMAIN = r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?"
_LABEL = re.compile(
    rf"^(?:global|tenant:(?P<tenant>{_NAME})|domain:(?P<domain>{_DOMAIN})"
    rf"|list:(?P<ltenant>{_NAME})/(?P<list>{_NAME}))$"
)


class ScopeKind(StrEnum):
    GLOBAL = "global"
    TENANT = "tenant"
    DOMAIN = "domain"
    LIST = "list"


@dataclass(frozen=True)
class Scope:
    kind: ScopeKind = ScopeKind.GLOBAL
    tenant: str = ""  # tenant scope, and the tenant a list belongs to
    domain: str = ""  # domain scope: the sender domain, lower-cased
    list_id: str = ""  # list scope

    @property
    def label(self) -> str:
        if self.kind is ScopeKind.TENANT:
            return f"tenant:{self.tenant}"
        if self.kind is ScopeKind.DOMAIN:
            return f"domain:{self.domain}"
        if self.kind is ScopeKind.LIST:
            return f"list:{self.tenant}/{self.list_id}"
        return "global"

    @classmethod
    def parse(cls, label: str) -> Scope:
        """The scope a label names; ValueError for anything else."""
        found = _LABEL.match(label.strip())
        if found is None:
            raise ValueError(
                f"not a suppression scope: {label!r} (global, tenant:NAME, domain:DOMAIN, "
                "list:TENANT/LIST)"
            )
        if found["tenant"]:
            return cls(ScopeKind.TENANT, tenant=found["tenant"])
        if found["domain"]:
            return cls(ScopeKind.DOMAIN, domain=found["domain"])
        if found["list"]:
            return cls(ScopeKind.LIST, tenant=found["ltenant"], list_id=found["list"])
        return GLOBAL


GLOBAL = Scope()


def scopes_for(*, tenant: str = "", sender: str = "", list_id: str = "") -> tuple[Scope, ...]:
    """Every scope a message falls in: global, its tenant, its sender's domain, its list."""
    scopes = [GLOBAL]
    if tenant and re.fullmatch(_NAME, tenant):
        scopes.append(Scope(ScopeKind.TENANT, tenant=tenant))
    domain = sender.rpartition("@")[2].strip().lower() if "@" in sender else ""
    if domain and re.fullmatch(_DOMAIN, domain):
        scopes.append(Scope(ScopeKind.DOMAIN, domain=domain))
    if tenant and list_id and re.fullmatch(_NAME, tenant) and re.fullmatch(_NAME, list_id):
        scopes.append(Scope(ScopeKind.LIST, tenant=tenant, list_id=list_id))
    return tuple(scopes)


class Suppression(BaseModel):
    """The value of one suppression record."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    v: int = VERSION
    address: str
    reason: str = "manual"
    source: str = "cli"
    ts: float = Field(default_factory=time.time)
    scope: str = "global"  # the scope's label


def suppression_key(address: str, scope: Scope = GLOBAL) -> bytes:
    bare = address.strip().lower()
    return (bare if scope.kind is ScopeKind.GLOBAL else f"{scope.label}|{bare}").encode()


def parse_key(key: str) -> tuple[Scope, str]:
    """(scope, address) of a record key; a key without a valid label is a global address."""
    label, sep, address = key.partition("|")
    if sep and ":" in label:
        try:
            return Scope.parse(label), address.strip().lower()
        except ValueError:
            pass
    return GLOBAL, key.strip().lower()


def encode_suppression(entry: Suppression) -> bytes:
    return entry.model_dump_json().encode()


def decode_suppression(raw: bytes) -> Suppression:
    return Suppression.model_validate(load_versioned(raw, VERSION, "suppression"))
