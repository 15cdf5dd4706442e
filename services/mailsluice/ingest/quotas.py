"""Tenant quotas at SMTP (tenancy/quota.py): a recipient that would take its tenant over the
hourly or daily quota gets 452 4.3.1 at RCPT, saying which quota and when to try again; the
recipients of a message are charged once Kafka has acknowledged it (the 250), as the HTTP API
charges once its records are acknowledged.

The tenant is the one the mail is sent for (scopes.py tenant_of): a tenant SMTP user's, or a
users-file user's or trusted network's `tenant` when the tenants file defines that tenant. A
quota counts the recipients accepted in every process (tenancy/usage.py shares the counts), so
it may be overshot by what the processes accept between two reports, and by transactions
admitted at RCPT that end at DATA at the same moment.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from mailsluice.ingest import replies
from mailsluice.ingest.plan import Plan
from mailsluice.tenancy.quota import QuotaBook
from mailsluice.tenancy.registry import Registry


class TenantQuotas:
    def __init__(
        self, tenants: Registry, book: QuotaBook, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.tenants = tenants
        self.book = book
        self.clock = clock

    def judge(self, tenant: str, accepted_so_far: int) -> str | None:
        """The 452 reply when one more recipient would take `tenant` over a quota, else None."""
        found = self.tenants.get(tenant) if tenant else None
        if found is None:
            return None
        over = self.book.admit(tenant, found.quotas, accepted_so_far + 1, self.clock())
        if over is None:
            return None
        return replies.S452_OVER_QUOTA.format(
            tenant=tenant, window=over.window, limit=over.limit, retry=over.retry_after_s
        )

    def charge(self, plan: Plan) -> int:
        """Charge the recipients of a plan whose records Kafka acknowledged; how many."""
        count = sum(len(r.envelope.recipients) for r in plan.records)
        tenant = plan.records[0].envelope.tenant if plan.records else ""
        if count and self.tenants.get(tenant) is not None:
            self.book.charge(tenant, count, self.clock())
            return count
        return 0
