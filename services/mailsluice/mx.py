"""What an MX lookup answered, classified the way SMTP needs it (RFC 5321 §5.1, RFC 7505 null
MX). Plain data: the verdicts at ingest and the routing at delivery read it without a resolver;
resolver.py produces it from DNS."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

MxKind = Literal["mx", "implicit", "null_mx", "nxdomain", "temp_fail"]


@dataclass(frozen=True)
class MxAnswer:
    """The outcome of an MX lookup. `hosts` is in preference order (lowest first); for an
    implicit MX (no MX records, RFC 5321 §5.1) it is the domain itself."""

    domain: str
    kind: MxKind
    hosts: tuple[str, ...] = ()
    ttl: int = 0
    detail: str = ""
    preferences: tuple[int, ...] = field(default=(), compare=False)
