"""Owned sender domains: which domains a principal (an SMTP AUTH user, an API tenant) may send
as, in the envelope and in the header `From:` (RFC 6409 §6.1, Postfix's
reject_sender_login_mismatch).

A pattern is a domain (`tenant-a.test`: that domain only) or a wildcard (`*.tenant-a.test`: every
subdomain, not the domain itself; list both to allow both). Names compare without regard to case
or a trailing dot; internationalised names compare in their ASCII (A-label) form.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from email import policy
from email.headerregistry import AddressHeader
from email.parser import BytesHeaderParser

_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_DOMAIN = re.compile(rf"^{_LABEL}(\.{_LABEL})+$")


class OwnersError(ValueError):
    pass


def normalise_domain(domain: str) -> str:
    """Lower-case ASCII form of a domain; "" when it cannot be one."""
    name = domain.strip().rstrip(".").lower()
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return ""
    return name if _DOMAIN.match(name) else ""


def domain_of(address: str) -> str:
    """The normalised domain of a mailbox `local@domain` ("" when there is none)."""
    local, at, domain = address.rpartition("@")
    return normalise_domain(domain) if at and local else ""


@dataclass(frozen=True)
class OwnedDomains:
    """The domains one principal owns. `unrestricted` owns every domain (no list configured)."""

    exact: frozenset[str] = frozenset()
    suffixes: frozenset[str] = frozenset()  # ".tenant-a.test" for `*.tenant-a.test`
    unrestricted: bool = False

    @classmethod
    def parse(cls, patterns: Iterable[str]) -> OwnedDomains:
        exact: set[str] = set()
        suffixes: set[str] = set()
        for pattern in patterns:
            wildcard = pattern.strip().startswith("*.")
            name = normalise_domain(pattern.strip()[2:] if wildcard else pattern)
            if not name:
                raise OwnersError(f"not a domain or *.domain: {pattern!r}")
            (suffixes if wildcard else exact).add("." + name if wildcard else name)
        return cls(frozenset(exact), frozenset(suffixes))

    @property
    def patterns(self) -> tuple[str, ...]:
        return (*sorted(self.exact), *sorted("*" + s for s in self.suffixes))

    def owns_domain(self, domain: str) -> bool:
        if self.unrestricted:
            return True
        name = normalise_domain(domain)
        if not name:
            return False
        return name in self.exact or any(name.endswith(s) for s in self.suffixes)

    def owns_address(self, address: str) -> bool:
        """A mailbox `local@domain` in an owned domain (an address without domain: never)."""
        return self.unrestricted or self.owns_domain(domain_of(address))


UNRESTRICTED = OwnedDomains(unrestricted=True)


def from_header_owned(header: bytes, owned: OwnedDomains) -> bool:
    """Every mailbox of every `From:` field in a message header (the bytes up to the empty line)
    is in an owned domain. No `From:` claims nothing and passes; a `From:` that the standard
    library parses with defects, or to no mailbox, fails: what a parser could read otherwise is
    not proven owned."""
    if owned.unrestricted:
        return True
    try:
        message = BytesHeaderParser(policy=policy.default).parsebytes(header)
        fields = message.get_all("From") or []
        for field in fields:
            defects: object = getattr(field, "defects", None)
            if not isinstance(field, AddressHeader) or defects or not field.addresses:
                return False
            for address in field.addresses:
                if not address.username or not owned.owns_domain(address.domain):
                    return False
    except Exception:  # the email package raises more than its documented errors
        return False
    return True
