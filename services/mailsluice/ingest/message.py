"""The message as queued: CRLF line endings, trace, id and missing headers added, pool header
taken out. Works on bytes (the body is never decoded, so 8-bit content passes untouched)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime

from mailsluice.contracts.envelope import ID_HEADER, id_field_value

_CHUNK = 1024 * 1024  # normalised a piece at a time
_FIELD_NAME = re.compile(rb"^[\x21-\x39\x3b-\x7e]+:")
_UNSAFE = re.compile(r"[^A-Za-z0-9.\-_:\[\]]")

# Chooses the stream: "transactional" mail overtakes "bulk" (the default) at delivery.
STREAM_HEADER = "X-Mailsluice-Stream"
# The campaign and the comma-separated tags the message is reported under (ingest/controls.py).
CAMPAIGN_HEADER = "X-Mailsluice-Campaign"
TAGS_HEADER = "X-Mailsluice-Tags"
# Open and click tracking of the message: off, opens, clicks or all (ingest/controls.py).
TRACK_HEADER = "X-Mailsluice-Track"
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


def normalise_line_endings(data: bytes) -> bytes | bytearray:
    """Every bare CR and bare LF becomes CRLF (SMTP smuggling defence: what we relay later has
    no stray line ends a downstream server could read as an end of data). Data without any is
    returned as is; otherwise the result is built chunk by chunk into one buffer of its final
    size, so a large message costs its normalised size and a chunk, never a list of lines."""
    size = normalised_size(data)
    if size == len(data):
        return data
    out = bytearray()
    pos = 0
    while pos < len(data):
        end = min(pos + _CHUNK, len(data))
        if end < len(data) and data[end - 1 : end + 1] == b"\r\n":
            end += 1  # never split a CRLF between chunks
        chunk = data[pos:end].replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        out += chunk.replace(b"\n", b"\r\n")
        pos = end
    return out


def normalised_size(data: bytes) -> int:
    """The length of `data` once normalised, counted without making the copy: each bare CR
    or bare LF grows by one byte."""
    crlf = data.count(b"\r\n")
    return len(data) + (data.count(b"\r") - crlf) + (data.count(b"\n") - crlf)


def split_header(data: bytes | bytearray) -> tuple[list[list[bytes]], int]:
    """Header fields (each a list of its lines, continuation lines included, without CRLF) and
    where the rest (the empty separator line and the body) starts. `data` must have CRLF line
    ends. An offset, not a slice: the body is never copied here."""
    fields: list[list[bytes]] = []
    pos = 0
    while pos < len(data):
        end = data.find(b"\r\n", pos)
        if end < 0:
            end = len(data)
        line = bytes(data[pos:end])
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        elif _FIELD_NAME.match(line):
            fields.append([line])
        else:
            break
        pos = end + 2
    return fields, min(pos, len(data))


def field_name(lines: list[bytes]) -> str:
    return lines[0].split(b":", 1)[0].decode("ascii", "replace").strip().lower()


def display_name(field: str) -> str:
    """A lower-case field name as usually written: "message-id" -> "Message-Id"."""
    return "-".join(part.capitalize() for part in field.split("-"))


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
    """The message as queued, in parts: our Received header, the header as kept and added, and
    the rest of the client's data (a view, not a copy). `stamped()` joins them once, so a large
    message costs one copy here on top of what the client sent."""

    received: bytes
    header: bytes
    rest: tuple[bytes | memoryview, ...]
    pool: str | None  # the pool header's value, None if absent
    stream: str | None = None  # the stream header's value, None if absent
    repeated: tuple[str, ...] = ()  # names of fields that occur more than once (lower-case)
    campaign: str | None = None  # the campaign header's value, None if absent
    tags: str | None = None  # the tags headers' values joined with commas, None if absent
    track: str | None = None  # the tracking header's value, None if absent

    @property
    def trace_len(self) -> int:
        return len(self.received)

    @property
    def size(self) -> int:
        return len(self.received) + len(self.header) + sum(len(part) for part in self.rest)

    @property
    def data(self) -> bytes:
        return b"".join((self.received, self.header, *self.rest))

    def stamped(self, queue_id: str, pool: str, *, tenant: str = "", campaign: str = "") -> bytes:
        """The data with the X-Mailsluice-Id header after our Received header."""
        value = id_field_value(queue_id, pool, tenant=tenant, campaign=campaign)
        line = f"{ID_HEADER}: {value}\r\n".encode()
        return b"".join((self.received, line, self.header, *self.rest))


def header_of(data: bytes) -> bytes:
    """The header of a prepared message (CRLF line ends), up to the empty line: the same
    header that is relayed, so the ownership check reads what recipients read."""
    end = data.find(b"\r\n\r\n")
    return data if end < 0 else data[: end + 2]


def prepare_message(
    raw: bytes, trace: Trace, *, pool_header: str, stream_header: str = STREAM_HEADER
) -> Prepared:
    """Normalise line ends, take out our control headers (pool, stream, campaign, tags, track, id),
    add Message-ID / Date if missing and prepend Received."""
    data = normalise_line_endings(raw)
    fields, start = split_header(data)
    # Our control headers never reach the recipient; the first occurrence counts, but every
    # tags field adds its tags.
    taken: dict[str, str] = {}
    tags = TAGS_HEADER.lower()
    control = {pool_header.lower(), stream_header.lower(), ID_HEADER.lower()}
    control |= {CAMPAIGN_HEADER.lower(), tags, TRACK_HEADER.lower()}
    kept: list[list[bytes]] = []
    for lines in fields:
        name = field_name(lines)
        if name == tags and name in taken:
            taken[name] += "," + field_value(lines)
        elif name in control:
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
    rest: list[bytes | memoryview] = [memoryview(data)[start:]]
    if not data.startswith(b"\r\n", start):
        # No header/body separator (header only, or body without header): add one.
        rest.insert(0, b"\r\n")
    if data and not data.endswith(b"\r\n") and len(data) > start:
        rest.append(b"\r\n")
    return Prepared(
        received_header(trace),
        header,
        tuple(rest),
        taken.get(pool_header.lower()),
        taken.get(stream_header.lower()),
        repeated_names(all_names),
        taken.get(CAMPAIGN_HEADER.lower()),
        taken.get(tags),
        taken.get(TRACK_HEADER.lower()),
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
