"""What a FakeMx (tests/support/fake_mx.py) answers: its script, reply texts and records.

Default recipient rules: a local part starting "defer" gets 450 4.2.0, "bounce" gets 550 5.1.1,
everything else 250.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

R421_GREETING = "421 4.3.2 Service not available, closing transmission channel"
R450_DEFER = "450 4.2.0 Mailbox temporarily unavailable"
R550_BOUNCE = "550 5.1.1 No such user here"
R451_DATA = "451 4.3.0 Local error in processing, try again later"
R250_QUEUED = "250 2.0.0 Ok: queued"
DROP_STAGES = ("connect", "ehlo", "mail", "rcpt", "data", "dot")


def default_rcpt_rules() -> list[tuple[str, str]]:
    return [("defer", R450_DEFER), ("bounce", R550_BOUNCE)]


@dataclass
class MxScript:
    """How a FakeMx behaves; fields may be changed at any time."""

    # Sent instead of the 220 banner, then the connection is closed (e.g. R421_GREETING).
    greeting: str | None = None
    # (local-part prefix, reply): the first matching rule answers RCPT; no match is 250.
    rcpt_rules: list[tuple[str, str]] = field(default_factory=default_rcpt_rules)
    # Optional function of the recipient address returning a reply (None: use rcpt_rules).
    rcpt_reply: Callable[[str], str | None] | None = None
    # Reply to MAIL FROM instead of 250 (e.g. "452 4.3.1 Insufficient system storage").
    mail_reply: str | None = None
    # Reply after the message body instead of accepting it (e.g. R451_DATA).
    data_reply: str | None = None
    # Seconds to wait before the banner and before each reply to EHLO/HELO, MAIL, RCPT, DATA.
    delay: float = 0.0
    # Close the connection without a reply at this stage, one of DROP_STAGES:
    # "connect" (no banner), "ehlo", "mail", "rcpt", "data" (instead of 354), "dot" (after body).
    drop_at: str | None = None

    def reply_for_rcpt(self, address: str) -> str:
        if self.rcpt_reply is not None:
            custom = self.rcpt_reply(address)
            if custom is not None:
                return custom
        local = address.rpartition("@")[0].lower() if "@" in address else address.lower()
        for prefix, reply in self.rcpt_rules:
            if local.startswith(prefix):
                return reply
        return "250 2.1.5 Ok"


@dataclass(frozen=True)
class ReceivedMessage:
    """One message the fake MX accepted."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    received_at: float  # time.time()
    peer: tuple[str, int]
    server: str  # "host:port" of the fake MX
