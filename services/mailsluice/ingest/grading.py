"""The engagement grade of each queue record of a plan: the highest grade of its recipients for
the message's tenant (contracts/engagement.py), which a warming pool sends first. The grades come
from the engagement store (mailsluice/engagement/store.py), a lookup in memory."""

from __future__ import annotations

from dataclasses import replace

from mailsluice.contracts.engagement import Grader
from mailsluice.ingest.plan import Plan


def graded(plan: Plan, grade: Grader) -> Plan:
    """The plan with every record's envelope graded (the plan itself when it has none)."""
    if not plan.records:
        return plan
    records = tuple(
        replace(
            record,
            envelope=record.envelope.model_copy(
                update={"grade": grade(record.envelope.tenant, record.envelope.recipients)}
            ),
        )
        for record in plan.records
    )
    return replace(plan, records=records)
