"""Who may AUTH: the users file's users (auth.py) and the tenants' SMTP users (the tenants file,
tenancy/model.py), checked the same way (salted password hashes, auth.verify_password).

A tenant's SMTP user sends for its tenant: the tenant's pools (the first is its default), the
sender domains it owns (envelope and `From:`) and its name as the tenant of its mail (its
suppression scopes, unsubscribe tokens and quotas). A name in both files would authenticate as
two principals: refused when ingest starts, and refused at AUTH if a later change of either
file brings one in (logged as an error), rather than one file silently winning.
"""

from __future__ import annotations

import logging

from mailsluice.ingest.auth import Credentials, User, verified
from mailsluice.tenancy.model import Tenant
from mailsluice.tenancy.registry import Registry

log = logging.getLogger(__name__)


class AccountsError(ValueError):
    """The users file and the tenants file name the same SMTP user."""


def tenant_user(tenant: Tenant, name: str) -> User:
    """The SMTP user `name` of `tenant` as ingest knows a user."""
    return User(
        name,
        tenant.smtp[name].password,
        tenant.pools,
        tenant.default_pool,
        tenant.owned,
        tenant.name,
        tenant.tracking or "",
    )


class Accounts:
    """The users of both files; SmtpAuth asks `authenticate`."""

    def __init__(self, credentials: Credentials, tenants: Registry) -> None:
        self.credentials = credentials
        self.tenants = tenants
        both = sorted(set(credentials.users) & self._tenant_users())
        if both:
            raise AccountsError(
                f"SMTP users in both the users file and the tenants file: {', '.join(both)}"
            )

    def _tenant_users(self) -> set[str]:
        return {name for tenant in self.tenants.tenants.values() for name in tenant.smtp}

    def user(self, name: str) -> User | None:
        listed = self.credentials.user(name)
        tenant = self.tenants.by_smtp_user(name)
        if listed is not None and tenant is not None:
            log.error("SMTP user %r is in both the users and the tenants file: refused", name)
            return None
        return tenant_user(tenant, name) if tenant is not None else listed

    def authenticate(self, username: str, password: str) -> User | None:
        return verified(self.user(username), password)

    def pools(self) -> set[str]:
        """Every pool a user of either file may send through (ingest creates their topics)."""
        tenants = {p for tenant in self.tenants.tenants.values() for p in tenant.pools}
        return self.credentials.pools() | tenants
