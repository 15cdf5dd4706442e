"""What a FakeMx (tests/support/fake_mx.py) answers: its script, the faults a recipient address
asks for, reply texts, and what it records (messages, and every connection's bytes).

The fault grammar is documented in fake_mx.py; `address_fault` parses it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from mailsluice.sandbox.chaos import TEXTS, Chaos

R421_GREETING = "421 4.3.2 Service not available, closing transmission channel"
R421_CLOSING = "421 4.7.0 Too many errors, closing connection"
R450_DEFER = "450 4.2.0 Mailbox temporarily unavailable"
R550_BOUNCE = "550 5.1.1 No such user here"
R451_DATA = "451 4.3.0 Local error in processing, try again later"
R250_QUEUED = "250 2.0.0 Ok: queued"
R250_RCPT = "250 2.1.5 Ok"
R502_NO_EHLO = "502 5.5.2 Command not recognized"
DROP_STAGES = ("connect", "ehlo", "mail", "rcpt", "data", "dot")

# An address-encoded reply takes its text from TEXTS (by code; the sandbox's chaos table, so
# both speak alike); the enhanced code is the default unless the address names one.
_FAULT = re.compile(
    r"(?P<name>tempfail|permfail|defer-421|drop)"
    r"|(?P<stage>rcpt|data)-(?P<code>[45]\d\d)(?:-(?P<enhanced>[45]\.\d{1,3}\.\d{1,3}))?"
    r"|slow-(?P<seconds>\d+(?:\.\d+)?)"
)


def reply_text(code: int, enhanced: str | None = None) -> str:
    default, text = TEXTS.get(code, (f"{code // 100}.0.0", "Fault asked for by the address"))
    return f"{code} {enhanced or default} {text}"


@dataclass(frozen=True)
class Fault:
    """What one recipient address asks of the fake MX (see fake_mx.py for the grammar)."""

    rcpt_reply: str | None = None  # the RCPT reply (None: no reply at all, the server closes)
    close: bool = False  # close the connection after the RCPT reply
    delay: float = 0.0  # seconds before the RCPT reply
    data_reply: str | None = None  # the reply at the end of DATA, instead of accepting


ACCEPT = Fault(R250_RCPT)


def address_fault(address: str) -> Fault:
    """The fault a recipient's local part names (before any "+tag"); ACCEPT for any other."""
    local = address.rpartition("@")[0] if "@" in address else address
    match = _FAULT.fullmatch(local.partition("+")[0].lower())
    if match is None:
        return ACCEPT
    name, stage = match["name"], match["stage"]
    if name == "tempfail":
        return Fault(R450_DEFER)
    if name == "permfail":
        return Fault(R550_BOUNCE)
    if name == "defer-421":
        return Fault(R421_CLOSING, close=True)
    if name == "drop":
        return Fault(None, close=True)
    if stage is not None:
        reply = reply_text(int(match["code"]), match["enhanced"])
        return Fault(reply) if stage == "rcpt" else Fault(R250_RCPT, data_reply=reply)
    return Fault(R250_RCPT, delay=float(match["seconds"]))


@dataclass
class MxScript:
    """How a FakeMx behaves beyond what addresses ask; fields may be changed at any time (a
    connection-stage field applies from the next connection)."""

    # Sent instead of the 220 banner, then the connection is closed (e.g. R421_GREETING).
    greeting: str | None = None
    # Accept connections and never say a word; each stays open until the client closes it.
    silent: bool = False
    # False: EHLO is refused with 502 (a server that knows only HELO).
    ehlo: bool = True
    # EHLO offers PIPELINING (RFC 2920), as nearly every real MX does; False: a server that
    # does not, so clients wait for each reply before the next command.
    pipelining: bool = True
    # Offer STARTTLS, answer it with 220 and then bytes that are no TLS handshake, and close.
    broken_tls: bool = False
    # Optional function of the recipient address returning a reply (None: the address decides).
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
    # True: `drop_at` applies to one connection, then is cleared (a pooled connection that
    # dies once, and a fresh one that works).
    drop_once: bool = False
    # Scripted failures by sender/recipient pattern and probability at MAIL, RCPT and DATA,
    # the sandbox MX's rules (mailsluice.sandbox.chaos; a seed makes them repeatable). Checked
    # after the fixed replies above and before what an address asks.
    chaos: Chaos | None = None

    def chaos_reply(self, stage: str, addresses: list[str]) -> str | None:
        return self.chaos.verdict(stage, addresses) if self.chaos is not None else None

    def drops(self, stage: str) -> bool:
        """Whether to close without a reply at `stage` (clearing `drop_at` if `drop_once`)."""
        if self.drop_at != stage:
            return False
        if self.drop_once:
            self.drop_at = None
        return True

    def fault_for_rcpt(self, address: str) -> Fault:
        if self.rcpt_reply is not None:
            custom = self.rcpt_reply(address)
            if custom is not None:
                return Fault(custom)
        chaotic = self.chaos_reply("rcpt", [address])
        if chaotic is not None:
            return Fault(chaotic, close=chaotic.startswith("421"))
        return address_fault(address)


@dataclass(frozen=True)
class ReceivedMessage:
    """One message the fake MX accepted."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    received_at: float  # time.time()
    peer: tuple[str, int]
    server: str  # "host:port" of the fake MX
    tls: bool = False  # it came over a STARTTLS-encrypted connection


@dataclass
class MxSession:
    """One connection to the fake MX: the bytes the server read, exactly as the client sent
    them (after STARTTLS, the decrypted stream), and whether it is still open."""

    peer: tuple[str, int]
    wire: bytearray = field(default_factory=bytearray)
    open: bool = True
    # Where each message body began in `wire`: the client sends it only after the 354 reply,
    # so the length of `wire` at that reply is exact.
    body_starts: list[int] = field(default_factory=list)

    def data_phases(self) -> list[bytes]:
        """Each DATA phase's bytes as sent: the body, dot-stuffed, and its terminator."""
        wire = bytes(self.wire)
        phases = []
        for start in self.body_starts:
            # The CRLF that ended the DATA line begins the terminator of an empty body.
            end = wire.find(b"\r\n.\r\n", start - 2)
            phases.append(wire[start : end + 5] if end >= 0 else wire[start:])
        return phases

    def commands(self) -> list[str]:
        """The command verbs in the order sent (upper case), message bodies left out."""
        wire = bytes(self.wire)
        text, pos = bytearray(), 0
        for start, phase in zip(self.body_starts, self.data_phases(), strict=True):
            text += wire[pos:start]
            pos = start + len(phase)
        text += wire[pos:]
        lines = (line.strip() for line in bytes(text).split(b"\n"))
        return [line.split(b" ", 1)[0].decode("ascii", "replace").upper() for line in lines if line]
