"""Schema versions of records. Every record carries `v`; a reader accepts the versions it knows
and refuses newer ones, so a record written by a newer release stays on its topic for a reader
that understands it instead of being misread."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


class NewerSchema(ValueError):
    """A record written with a newer schema than this reader knows."""


def check_version(data: Mapping[str, Any], current: int, record: str) -> None:
    """Raise NewerSchema when `data` (a decoded record) is newer than `current`."""
    version = int(data.get("v", 0))
    if version > current:
        raise NewerSchema(f"{record} schema v{version} is newer than this reader (v{current})")


def load_versioned(raw: bytes, current: int, record: str) -> dict[str, Any]:
    """A JSON object record, refused when it is not an object or newer than `current`."""
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError(f"{record} record is not a JSON object")
    check_version(data, current, record)
    return data
