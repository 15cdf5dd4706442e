"""The body a tenant's webhook endpoint receives: part of the public API, versioned.

    {"type": "event.batch", "version": 1, "timestamp": "2026-12-03T14:00:00.000Z",
     "data": [{"type": "delivered", "id": "evt_3_1042", "timestamp": "...", "event": "delivery",
               "tenant": "acme", "campaign": "spring", "tags": ["news"], "queue_id": "...",
               "sender": "...", "recipient": "...", "code": 250, "enhanced": "2.0.0",
               "text": "...", "reason": "", "attempt": 1, "remote": "mx.example.", "scope": ""}]}

`type` of an item is the webhook event type the endpoint asked for (contracts/webhooks.py);
`event` the pipeline's own type, which tells an expiration from a bounce. An item's `id` names
its event on mailsluice.events (partition and offset), so it is the same in every batch that
carries the event again: receivers deduplicate on it (delivery is at least once). A batch
holds events of one tenant only. Fields are only ever added; `version` grows when one changes
meaning, and `decode_batch` refuses a newer one.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from mailsluice.contracts.events import Event
from mailsluice.contracts.versioning import NewerSchema
from mailsluice.contracts.webhooks import WebhookEventType

PAYLOAD_VERSION = 1
BATCH_TYPE = "event.batch"


def event_id(partition: int, offset: int) -> str:
    """The stable id of the event at (partition, offset) of mailsluice.events."""
    return f"evt_{partition}_{offset}"


def iso_time(ts: float) -> str:
    """RFC 3339 UTC with milliseconds and a Z."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def payload_item(event: Event, wtype: WebhookEventType, eid: str) -> dict[str, Any]:
    """One event as an endpoint sees it."""
    return {
        "type": wtype.value,
        "id": eid,
        "timestamp": iso_time(event.ts),
        "event": event.type.value,
        "tenant": event.tenant,
        "campaign": event.campaign,
        "tags": list(event.tags),
        "queue_id": event.queue_id,
        "sender": event.sender,
        "recipient": event.recipient,
        "code": event.code,
        "enhanced": event.enhanced,
        "text": event.text,
        "reason": event.reason,
        "attempt": event.attempt,
        "remote": event.remote,
        "scope": event.scope,
    }


def batch_body(items: Sequence[dict[str, Any]], now: float) -> str:
    """The JSON body of a batch (compact: the bytes signed are the bytes sent)."""
    doc = {
        "type": BATCH_TYPE,
        "version": PAYLOAD_VERSION,
        "timestamp": iso_time(now),
        "data": items,
    }
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


def batch_id(tenant: str, endpoint: str, event_ids: Iterable[str]) -> str:
    """The webhook-id of a batch: a digest of whose it is and which events it holds, so the
    same batch built again (after a crash) has the same id. No dots (Standard Webhooks)."""
    digest = hashlib.sha256("\n".join([tenant, endpoint, *event_ids]).encode()).digest()
    return "msg_" + base64.b32encode(digest[:20]).decode().lower()


def decode_batch(body: bytes | str) -> dict[str, Any]:
    """A received batch (receivers and tests); NewerSchema for a newer version."""
    doc = json.loads(body)
    if not isinstance(doc, dict) or doc.get("type") != BATCH_TYPE:
        raise ValueError("not a Mailsluice event batch")
    if int(doc.get("version", 0)) > PAYLOAD_VERSION:
        raise NewerSchema(f"batch version {doc['version']} is newer than v{PAYLOAD_VERSION}")
    return doc
