"""Records of the compacted topic mailsluice.api-idempotency: the first answer the HTTP API gave
to a POST with an `Idempotency-Key`, kept per tenant and key so that the same request sent
again (to any replica) gets the same answer and sends nothing.

Key: `<tenant>|<idempotency key>`. Value: the request's fingerprint (a digest of its body) and
the answer (status and JSON body). The topic is compacted and deletes after a day
(contracts/topics.py), so a key is remembered for a day at least; a retry after that is a new
request.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from mailsluice.contracts.versioning import load_versioned

VERSION = 1

MAX_KEY_CHARS = 255


class IdempotentAnswer(BaseModel):
    """The answer given to one (tenant, idempotency key)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    v: int = VERSION
    tenant: str
    key: str
    fingerprint: str  # sha256 hex of the request body as parsed (api/idempotency.py)
    status: int
    body: dict[str, Any]
    ts: float = Field(default_factory=time.time)


def valid_key(key: str) -> bool:
    """1-255 printable ASCII characters (what the Idempotency-Key header may hold)."""
    return 0 < len(key) <= MAX_KEY_CHARS and all(" " <= c <= "~" for c in key)


def answer_key(tenant: str, key: str) -> bytes:
    return f"{tenant}|{key}".encode()


def encode_answer(answer: IdempotentAnswer) -> bytes:
    return answer.model_dump_json().encode()


def decode_answer(raw: bytes) -> IdempotentAnswer:
    return IdempotentAnswer.model_validate(load_versioned(raw, VERSION, "idempotent answer"))
