"""The public body and the stage's records: event items carry the tenant's fields and a stable
id, batch ids are digests without dots, and readers refuse newer versions."""

from __future__ import annotations

import json

import pytest

from mailsluice.contracts.events import Event, EventType
from mailsluice.contracts.versioning import NewerSchema
from mailsluice.contracts.webhook_payload import (
    batch_body,
    batch_id,
    decode_batch,
    event_id,
    payload_item,
)
from mailsluice.contracts.webhook_records import (
    EndpointStatus,
    PendingBatch,
    decode_batch_record,
    decode_status,
    encode_batch,
    encode_status,
)
from mailsluice.contracts.webhooks import WebhookEventType


def test_an_item_says_what_happened_to_whose_message() -> None:
    event = Event(
        type=EventType.EXPIRATION,
        ts=1764770400.5,
        queue_id="q1",
        recipient="r@example.test",
        tenant="acme",
        campaign="spring",
        tags=("news", "eu"),
        code=451,
        enhanced="4.4.7",
    )
    item = payload_item(event, WebhookEventType.BOUNCE, event_id(3, 42))
    assert item["type"] == "bounce" and item["event"] == "expiration"
    assert item["id"] == "evt_3_42" and item["timestamp"] == "2025-12-03T14:00:00.500Z"
    assert (item["tenant"], item["campaign"], item["tags"]) == ("acme", "spring", ["news", "eu"])
    body = batch_body([item], now=1764770401)
    assert "\n" not in body and ": " not in body  # compact: what is signed is what is sent
    doc = decode_batch(body)
    assert doc["type"] == "event.batch" and doc["version"] == 1 and doc["data"] == [item]


def test_batch_ids_are_stable_digests_without_dots() -> None:
    one = batch_id("acme", "main", ["evt_0_1", "evt_0_2"])
    assert one == batch_id("acme", "main", ["evt_0_1", "evt_0_2"])
    assert one != batch_id("acme", "other", ["evt_0_1", "evt_0_2"])
    assert one != batch_id("bravo", "main", ["evt_0_1", "evt_0_2"])
    assert one.startswith("msg_") and "." not in one


def test_readers_refuse_newer_versions() -> None:
    with pytest.raises(NewerSchema):
        decode_batch(json.dumps({"type": "event.batch", "version": 2, "data": []}))
    batch = PendingBatch(id="msg_x", tenant="acme", endpoint="main", events=1, body="{}")
    assert decode_batch_record(encode_batch(batch)) == batch
    newer = json.loads(encode_batch(batch))
    newer["v"] = 2
    with pytest.raises(NewerSchema):
        decode_batch_record(json.dumps(newer).encode())
    status = EndpointStatus(tenant="acme", endpoint="main")
    assert decode_status(encode_status(status)) == status
    assert batch.key == status.key == b"acme|main"
