"""Records of the webhook stage's own topics: a batch waiting for its next attempt (the delay
tiers `mailsluice.webhooks.retry.<tier>`), a dead batch (`mailsluice.webhooks.dead`), and an
endpoint's status (compacted `mailsluice.webhooks.status`). All keyed `tenant|endpoint`.

A batch carries its body as sent the first time: every attempt signs and sends the same bytes
under the same webhook-id, with a fresh timestamp. The endpoint's URL and secrets are looked up
at each attempt, so a rotated secret or a moved URL applies to batches already waiting.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from mailsluice.contracts.versioning import load_versioned

VERSION = 1


def endpoint_key(tenant: str, endpoint: str) -> bytes:
    return f"{tenant}|{endpoint}".encode()


class PendingBatch(BaseModel):
    """A batch of one endpoint, between attempts or dead (`reason` and `dead_at` set)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    v: int = VERSION
    id: str  # the webhook-id
    tenant: str
    endpoint: str
    events: int  # how many events the body holds
    body: str
    attempts: int = 0  # attempts made so far
    first_attempt: float = 0.0  # epoch seconds of the first attempt
    not_before: float = 0.0  # the next attempt's earliest time
    last_error: str = ""
    reason: str = ""  # dead only: why it was given up
    dead_at: float = 0.0

    @property
    def key(self) -> bytes:
        return endpoint_key(self.tenant, self.endpoint)


def encode_batch(batch: PendingBatch) -> bytes:
    return batch.model_dump_json().encode()


def decode_batch_record(raw: bytes) -> PendingBatch:
    return PendingBatch.model_validate(load_versioned(raw, VERSION, "webhook batch"))


class EndpointState(StrEnum):
    ACTIVE = "active"
    FAILING = "failing"  # its last attempt failed; retries go on
    PAUSED = "paused"  # failing for the pause time, or an admin paused it; nothing is sent


class EndpointStatus(BaseModel):
    """An endpoint's state as the tenant sees it."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    v: int = VERSION
    tenant: str
    endpoint: str
    state: EndpointState = EndpointState.ACTIVE
    since: float = 0.0  # when it entered this state
    failing_since: float = 0.0  # first failure since the last success (0: none)
    consecutive_failures: int = 0
    last_error: str = ""
    last_success: float = 0.0
    updated: float = 0.0
    by: str = "worker"  # "worker" or "admin"

    @property
    def key(self) -> bytes:
        return endpoint_key(self.tenant, self.endpoint)


def encode_status(status: EndpointStatus) -> bytes:
    return status.model_dump_json().encode()


def decode_status(raw: bytes) -> EndpointStatus:
    return EndpointStatus.model_validate(load_versioned(raw, VERSION, "webhook status"))


class StatusTable:
    """Endpoint statuses as read from mailsluice.webhooks.status, by key. A record older (by
    `updated`) than the one held is ignored: senders write in no common order, and a sender's
    own records come back after it moved on. A tombstone removes; a record this version cannot
    read leaves the last known state. The webhook sender and the API read it alike."""

    def __init__(self) -> None:
        self._status: dict[bytes, EndpointStatus] = {}

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        if value is None:
            self._status.pop(key, None)
            return
        try:
            status = decode_status(value)
        except ValueError:
            return
        held = self._status.get(key)
        if held is None or status.updated >= held.updated:
            self._status[key] = status

    def get(self, tenant: str, endpoint: str) -> EndpointStatus:
        found = self._status.get(endpoint_key(tenant, endpoint))
        return found or EndpointStatus(tenant=tenant, endpoint=endpoint)
