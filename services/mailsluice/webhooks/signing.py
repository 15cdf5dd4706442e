"""Standard Webhooks signatures (spec/standard-webhooks.md of standard-webhooks/standard-webhooks):
HMAC-SHA256 over `{webhook-id}.{webhook-timestamp}.{body}`, sent as `v1,<base64>`, one per
secret of the endpoint, space-separated, so a receiver rotating its secret accepts either.

`verify` is the receiver's side, for tests and for tenants who want a reference. Pure.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping, Sequence

from mailsluice.tenancy.model import webhook_secret_bytes

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
SCHEME = "v1"
# How far a receiver lets the timestamp be from its clock (the reference libraries' 5 min).
TOLERANCE_S = 300


class VerificationError(ValueError):
    """A webhook whose headers or signature do not verify."""


def signature(secret: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """One `v1,<base64 HMAC-SHA256>` signature."""
    if "." in msg_id:
        raise ValueError("a webhook-id holds no dots (they delimit the signed content)")
    signed = b"%s.%d.%s" % (msg_id.encode(), timestamp, body)
    digest = hmac.new(secret, signed, hashlib.sha256).digest()
    return f"{SCHEME},{base64.b64encode(digest).decode()}"


def sign_headers(
    secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """The three headers of one attempt, signed with every `whsec_` secret in order."""
    if not secrets:
        raise ValueError("an endpoint has at least one secret")
    sigs = [signature(webhook_secret_bytes(s), msg_id, timestamp, body) for s in secrets]
    return {
        ID_HEADER: msg_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: " ".join(sigs),
    }


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
    tolerance_s: float = TOLERANCE_S,
) -> None:
    """Raise VerificationError unless one of the `v1` signatures in `headers` is the one
    `secret` (`whsec_...`) makes, and the timestamp is within `tolerance_s` of `now`."""
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        msg_id = lowered[ID_HEADER]
        timestamp = int(lowered[TIMESTAMP_HEADER])
        offered = lowered[SIGNATURE_HEADER].split(" ")
    except (KeyError, ValueError):
        raise VerificationError("missing or malformed webhook headers") from None
    if abs(now - timestamp) > tolerance_s:
        raise VerificationError("timestamp outside the tolerance")
    expected = signature(webhook_secret_bytes(secret), msg_id, timestamp, body)
    for sig in offered:
        if sig.startswith(f"{SCHEME},") and hmac.compare_digest(sig, expected):
            return
    raise VerificationError("no matching signature")
