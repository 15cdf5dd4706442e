"""Size limits that producers, topics and consumers must agree on."""

from __future__ import annotations

# Room for the record's headers (envelope) and batch overhead on top of the message itself.
RECORD_OVERHEAD_BYTES = 64 * 1024


def record_limit(max_message_size: int) -> int:
    """max.message.bytes / max_request_size that fits a message of the advertised SIZE."""
    return max_message_size + RECORD_OVERHEAD_BYTES


# The largest message by default: the SIZE ingest advertises, and what delivery workers and the
# retry mover produce (20 MiB, as KumoMTA; Postfix takes 10 MiB).
DEFAULT_MAX_MESSAGE_SIZE = 20 * 1024 * 1024
