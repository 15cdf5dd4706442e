"""The message as queued: CRLF line endings, trace, id and missing headers added, pool header
taken out. Works on bytes (the body is never decoded, so 8-bit content passes untouched)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime

_LINE_END = re.compile(rb"\r\n|\r|\n")
_FIELD_NAME = re.compile(rb"^[\x21-\x39\x3b-\x7e]+:")
_UNSAFE = re.compile(r"[^A-Za-z0-9.\-_:\[\]]")

# `X-Mailsluice-Id: <queue id>; pool=<pool>`, right below our Received header: a feedback-loop
# report quotes the original header, and this is how a complaint finds its message and pool
# (ingest feedback.py). A client's own copy is taken out, so ours is the only one.
ID_HEADER = "X-Mailsluice-Id"
# Chooses the stream: "transactional" mail overtakes "bulk" (the default) at delivery.
STREAM_HEADER = "X-Mailsluice-Stream"
# The fields RFC 5322 §3.6 allows at most once (lower-case); Resent-* blocks may repeat.
SINGLE_FIELDS = (
    "date",
    "from",
    "sender",
    "reply-to",
    "to",
    "cc",
    "bcc",
    "message-id",
    "in-reply-to",
    "references",
    "subject",
)


def message_key(client: str, sender: str, content: bytes) -> str:
    """The identity of a message as its client sent it: who sent it (user or trusted network),
    the reverse-path and the exact bytes. An MTA that sends a message again after a 451 sends
    its queue file again, so both copies share the key and delivery sends one (see
    delivery/worker/dedup.py); a message rebuilt with a new Date or Message-ID is a new one."""
    digest = hashlib.sha256(f"{client}\0{sender}\0".encode())
    digest.update(content)
    return digest.hexdigest()[:32]


def normalise_line_endings(data: bytes) -> bytes:
    """Every bare CR and bare LF becomes CRLF (SMTP smuggling defence: what we relay later has
    no stray line ends a downstream server could read as an end of data)."""
    return _LINE_END.sub(b"\r\n", data)


def split_header(data: bytes) -> tuple[list[list[bytes]], bytes]:
    """Header fields (each a list of its lines, continuation lines included, without CRLF) and
    the rest (the empty separator line and the body). `data` must have CRLF line ends."""
    fields: list[list[bytes]] = []
    pos = 0
    while pos < len(data):
        end = data.find(b"\r\n", pos)
        if end < 0:
            end = len(data)
        line = data[pos:end]
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        elif _FIELD_NAME.match(line):
            fields.append([line])
        else:
            break
        pos = end + 2
    return fields, data[pos:]


def field_name(lines: list[bytes]) -> str:
    return lines[0].split(b":", 1)[0].decode("ascii", "replace").strip().lower()


def field_value(lines: list[bytes]) -> str:
    raw = b"".join([lines[0].split(b":", 1)[1], *lines[1:]])
    return raw.decode("ascii", "replace").strip()


def safe_token(value: str, limit: int = 255) -> str:
    """A client-supplied word made safe for a header (no CR/LF, no comment breaking)."""
    return _UNSAFE.sub("?", value)[:limit] or "unknown"


@dataclass(frozen=True)
class Trace:
    helo: str
    peer_ip: str
    hostname: str
    protocol: str  # SMTP, ESMTP, ESMTPS, ESMTPA, ESMTPSA (RFC 3848)
    queue_id: str
    recipients: tuple[str, ...]
    now: float


def received_header(trace: Trace) -> bytes:
    date = format_datetime(datetime.fromtimestamp(trace.now, UTC))
    parts = [
        f"Received: from {safe_token(trace.helo)} ([{safe_token(trace.peer_ip)}])",
        f"\tby {trace.hostname} (Mailsluice) with {trace.protocol} id {trace.queue_id}",
    ]
    # "for" only names a lone recipient: listing many would disclose the whole envelope.
    if len(trace.recipients) == 1:
        parts.append(f"\tfor <{trace.recipients[0]}>; {date}")
    else:
        parts[-1] += f"; {date}"
    return "\r\n".join(parts).encode() + b"\r\n"


@dataclass(frozen=True)
class Prepared:
    data: bytes
    pool: str | None  # the pool header's value, None if absent
    trace_len: int = 0  # length of the Received header at the start of data
    stream: str | None = None  # the stream header's value, None if absent
    repeated: tuple[str, ...] = ()  # names of fields that occur more than once (lower-case)

    def stamped(self, queue_id: str, pool: str) -> bytes:
        """The data with the X-Mailsluice-Id header after our Received header."""
        line = f"{ID_HEADER}: {queue_id}; pool={pool}\r\n".encode()
        return self.data[: self.trace_len] + line + self.data[self.trace_len :]


def prepare_message(
    raw: bytes, trace: Trace, *, pool_header: str, stream_header: str = STREAM_HEADER
) -> Prepared:
    """Normalise line ends, take out the pool and stream headers, add Message-ID / Date if
    missing and prepend Received."""
    data = normalise_line_endings(raw)
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    fields, rest = split_header(data)
    # Our control headers never reach the recipient; the first occurrence counts.
    taken: dict[str, str] = {}
    control = {pool_header.lower(), stream_header.lower(), ID_HEADER.lower()}
    kept: list[list[bytes]] = []
    for lines in fields:
        name = field_name(lines)
        if name in control:
            taken.setdefault(name, field_value(lines))
        else:
            kept.append(lines)
    all_names = [field_name(lines) for lines in kept]
    names = set(all_names)
    added: list[bytes] = []
    if "date" not in names:
        date = format_datetime(datetime.fromtimestamp(trace.now, UTC))
        added.append(f"Date: {date}".encode())
    if "message-id" not in names:
        added.append(f"Message-ID: <{trace.queue_id}@{trace.hostname}>".encode())
    header = b"".join(b"\r\n".join(lines) + b"\r\n" for lines in kept)
    header += b"".join(line + b"\r\n" for line in added)
    if not rest.startswith(b"\r\n"):
        # No header/body separator (header only, or body without header): add one.
        rest = b"\r\n" + rest
    received = received_header(trace)
    return Prepared(
        received + header + rest,
        taken.get(pool_header.lower()),
        len(received),
        taken.get(stream_header.lower()),
        repeated_names(all_names),
    )


def repeated_names(names: list[str]) -> tuple[str, ...]:
    """Each name that occurs more than once, in order of its second occurrence."""
    seen: set[str] = set()
    repeated: list[str] = []
    for name in names:
        if name in seen and name not in repeated:
            repeated.append(name)
        seen.add(name)
    return tuple(repeated)
