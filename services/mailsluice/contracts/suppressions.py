"""Records of the compacted topic mailsluice.suppressions: key = address lower-cased; a null value
(tombstone) removes the entry."""

from __future__ import annotations

import time

from pydantic import BaseModel, ConfigDict, Field

from mailsluice.contracts.versioning import load_versioned

VERSION = 1


class Suppression(BaseModel):
    """The value of one suppression record."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    v: int = VERSION
    address: str
    reason: str = "manual"
    source: str = "cli"
    ts: float = Field(default_factory=time.time)


def suppression_key(address: str) -> bytes:
    return address.strip().lower().encode()


def encode_suppression(entry: Suppression) -> bytes:
    return entry.model_dump_json().encode()


def decode_suppression(raw: bytes) -> Suppression:
    return Suppression.model_validate(load_versioned(raw, VERSION, "suppression"))
