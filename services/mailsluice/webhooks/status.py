"""Endpoint statuses: active, failing (retries go on), paused (nothing is sent).

The book is loaded from the compacted topic mailsluice.webhooks.status at start and follows it
(an admin's resume, other senders' records), and every attempt changes it: a success makes an
endpoint active, a failure failing, and failures without a success for `pause_after_s` (or a
410 Gone) pause it. A change of state is written at once; while an endpoint stays failing its
record is written again at most every `refresh_s`, so its last error and count stay current
without a record per failed POST. Pure: the caller passes the clock and writes the records.
"""

from __future__ import annotations

from mailsluice.contracts.webhook_records import EndpointState, EndpointStatus, StatusTable

REFRESH_S = 60.0
GONE = "410 Gone"


class EndpointBook(StatusTable):
    def __init__(self, pause_after_s: float, refresh_s: float = REFRESH_S) -> None:
        super().__init__()
        self.pause_after_s = pause_after_s
        self.refresh_s = refresh_s
        self._written: dict[bytes, float] = {}

    def paused(self, tenant: str, endpoint: str) -> bool:
        return self.get(tenant, endpoint).state is EndpointState.PAUSED

    def paused_count(self) -> int:
        return sum(s.state is EndpointState.PAUSED for s in self._status.values())

    def statuses(self) -> list[EndpointStatus]:
        return sorted(self._status.values(), key=lambda s: (s.tenant, s.endpoint))

    def succeeded(self, tenant: str, endpoint: str, now: float) -> EndpointStatus | None:
        """A 2xx: the record to write, or None when nothing worth writing changed."""
        old = self.get(tenant, endpoint)
        new = old.model_copy(
            update={
                "state": EndpointState.ACTIVE,
                "since": now if old.state is not EndpointState.ACTIVE else old.since or now,
                "failing_since": 0.0,
                "consecutive_failures": 0,
                "last_success": now,
                "updated": now,
                "by": "worker",
            }
        )
        return self._keep(new, old.state is not EndpointState.ACTIVE or not old.last_success)

    def failed(
        self, tenant: str, endpoint: str, error: str, now: float, *, gone: bool = False
    ) -> EndpointStatus | None:
        """A failed attempt: the record to write, or None."""
        old = self.get(tenant, endpoint)
        failing_since = old.failing_since or now
        if gone or now - failing_since >= self.pause_after_s:
            state = EndpointState.PAUSED
        elif old.state is EndpointState.PAUSED:
            state = old.state
        else:
            state = EndpointState.FAILING
        new = old.model_copy(
            update={
                "state": state,
                "since": now if state is not old.state else old.since,
                "failing_since": failing_since,
                "consecutive_failures": old.consecutive_failures + 1,
                "last_error": error[:500],
                "updated": now,
                "by": "worker",
            }
        )
        return self._keep(new, state is not old.state)

    def _keep(self, new: EndpointStatus, changed: bool) -> EndpointStatus | None:
        self._status[new.key] = new
        last = self._written.get(new.key)
        if not changed and last is not None and new.updated - last < self.refresh_s:
            return None
        self._written[new.key] = new.updated
        return new


def admin_status(
    old: EndpointStatus, state: EndpointState, now: float, note: str = ""
) -> EndpointStatus:
    """An operator's pause or resume: a resume starts the failure count over."""
    update: dict[str, object] = {"state": state, "since": now, "updated": now, "by": "admin"}
    if state is EndpointState.ACTIVE:
        update.update(failing_since=0.0, consecutive_failures=0)
    if note:
        update["last_error"] = note
    return old.model_copy(update=update)
