"""Record keys made of fields joined by `|` (tenant, campaign, address, ...): none of the names
they join holds a `|` (contracts/suppressions.py, contracts/campaigns.py)."""

from __future__ import annotations

SEP = "|"


def key_fields(key: bytes | str, count: int, what: str) -> list[str]:
    """The `count` fields of a record key; ValueError naming `what` ("an engagement key") when
    it has fewer or its last is empty."""
    text = key.decode(errors="replace") if isinstance(key, bytes) else key
    fields = text.split(SEP, count - 1)
    if len(fields) != count or not fields[-1]:
        raise ValueError(f"not {what}: {text[:200]!r}")
    return fields
