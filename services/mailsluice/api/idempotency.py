"""Idempotency keys: a POST sent again with the same `Idempotency-Key` gets the first answer
and sends nothing.

The first 202 per (tenant, key) is written with acks to the compacted topic
mailsluice.api-idempotency (contracts/idempotency.py) before the client gets it; every replica
reads the topic at start and follows it, so a retry that lands on another replica is known
there too. A retry with another body is a client error (422); one that comes while the first
is still being handled here is 409. Only a 202 is kept: a 429 or 503 must be retryable.

Two replicas that get the same key at the same moment both send; the message keys of their
records are the same (api/compose.py `message_key`), so delivery's dedup sends each recipient
once anyway.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError

from mailsluice.api.problems import Problem
from mailsluice.contracts.idempotency import (
    IdempotentAnswer,
    answer_key,
    decode_answer,
    encode_answer,
    valid_key,
)

log = logging.getLogger(__name__)

Write = Callable[[bytes, bytes], Awaitable[None]]  # key, value; raises when not acknowledged


def fingerprint(body: Any) -> str:
    """A digest of the request as parsed (key order and spacing do not matter)."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def check_key(key: str) -> str:
    if not valid_key(key):
        raise Problem(
            400, "Bad Idempotency-Key", "An Idempotency-Key is 1-255 printable ASCII characters."
        )
    return key


class IdempotencyBook:
    """The answers known (read from the topic, or given here) and the keys in flight here."""

    def __init__(self, write: Write | None = None) -> None:
        self._write = write
        self._answers: dict[tuple[str, str], IdempotentAnswer] = {}
        self._in_flight: set[tuple[str, str]] = set()

    def __len__(self) -> int:
        return len(self._answers)

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        """One record of the topic (kafka/compacted.py); a tombstone forgets the key."""
        if key is None:
            return
        tenant, _, idem = key.decode(errors="replace").partition("|")
        if value is None:
            self._answers.pop((tenant, idem), None)
            return
        try:
            answer = decode_answer(value)
        except (ValidationError, ValueError):
            log.warning("undecodable idempotency record ignored")
            return
        self._answers.setdefault((answer.tenant, answer.key), answer)

    def begin(self, tenant: str, key: str, print_: str) -> IdempotentAnswer | None:
        """The stored answer of a retry; None when the request is new (and now in flight).
        Raises Problem 422 (same key, other body) or 409 (in flight)."""
        known = self._answers.get((tenant, key))
        if known is not None:
            if known.fingerprint != print_:
                raise Problem(
                    422,
                    "Idempotency-Key reused",
                    "This Idempotency-Key was used with another request body.",
                )
            return known
        if (tenant, key) in self._in_flight:
            raise Problem(
                409,
                "Request in progress",
                "A request with this Idempotency-Key is still being handled.",
                headers={"Retry-After": "1"},
            )
        self._in_flight.add((tenant, key))
        return None

    def end(self, tenant: str, key: str) -> None:
        self._in_flight.discard((tenant, key))

    async def keep(
        self, tenant: str, key: str, print_: str, status: int, body: dict[str, Any]
    ) -> None:
        """Write the answer with acks (raises when not acknowledged), then know it here."""
        answer = IdempotentAnswer(
            tenant=tenant, key=key, fingerprint=print_, status=status, body=body
        )
        if self._write is not None:
            await self._write(answer_key(tenant, key), encode_answer(answer))
        self._answers.setdefault((tenant, key), answer)
