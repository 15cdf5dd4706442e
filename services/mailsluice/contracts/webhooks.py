"""The event types a tenant's webhook endpoint may ask for, and which events of
mailsluice.events each one is. The names are those the services our users leave behind use
(SendGrid, Postmark): part of the public API, so only ever added to."""

from __future__ import annotations

from enum import StrEnum

from mailsluice.contracts.events import EventType


class WebhookEventType(StrEnum):
    PROCESSED = "processed"  # accepted and queued (ingest's reception)
    DELIVERED = "delivered"
    DEFERRED = "deferred"  # a transient failure; the message is retried
    BOUNCE = "bounce"  # a permanent failure or an expiry
    SUPPRESSED = "suppressed"
    COMPLAINT = "complaint"
    UNSUBSCRIBE = "unsubscribe"
    OPEN = "open"  # once tracking exists
    CLICK = "click"  # once tracking exists


WEBHOOK_TYPE_OF: dict[EventType, WebhookEventType] = {
    EventType.RECEPTION: WebhookEventType.PROCESSED,
    EventType.DELIVERY: WebhookEventType.DELIVERED,
    EventType.TRANSIENT_FAILURE: WebhookEventType.DEFERRED,
    EventType.BOUNCE: WebhookEventType.BOUNCE,
    EventType.EXPIRATION: WebhookEventType.BOUNCE,
    EventType.SUPPRESSED: WebhookEventType.SUPPRESSED,
    EventType.COMPLAINT: WebhookEventType.COMPLAINT,
    EventType.UNSUBSCRIBE: WebhookEventType.UNSUBSCRIBE,
}
